"""Small helpers used everywhere: all-or-nothing file writes (:mod:`.atomic`) and torchrun set-up
(:mod:`.distributed`)."""
