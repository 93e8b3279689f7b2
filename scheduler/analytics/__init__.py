"""What happened: the delivery log, statistics, roll-ups and retention."""
