"""Methods beyond FS-PC: PASCAL's serial simulation and adaptive levels, PMSM quantisation."""
