"""SOP templates: versions, touchpoints, timing rules, content and rendering."""
