"""Running a converted network: the parallel form (one pass) and the serial form (T steps, explicit state)."""
