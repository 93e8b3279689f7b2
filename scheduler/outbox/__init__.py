"""The outbox: enrollment, planning of cron occurrences, dispatch, delivery policies and task mode."""
