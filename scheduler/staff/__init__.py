"""Staff execution: remind-mode deliveries as tasks in a staff member's inbox."""
