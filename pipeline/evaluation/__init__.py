"""Evaluation maths and reports: per-case per-class metrics with macro/micro summaries (:mod:`.metrics`), case naming
(:mod:`.cases`) and plots/reports (:mod:`.report`)."""
