"""What an SOP achieves: goals and conversions, tracked links, A/B variants and
holdouts (see ``scheduler.flows.goals``, ``scheduler.flows.forecast`` and
``scheduler.analytics.outcomes``)."""
