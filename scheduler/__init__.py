"""Enrollments, the deliveries outbox, due-time computation and dispatch."""
