"""Delta table helpers (:mod:`.tables`) and the run state kept beside the tables (:mod:`.run_state`)."""
