"""Distribution-aware calibration ([STDC]): options (:mod:`.config`), data handling
(:mod:`.batches`), the FS-PC baseline (:mod:`.baseline`), one module per stage (:mod:`.da`,
:mod:`.batchnorm`, :mod:`.bias`), the learned terms and applying them (:mod:`.terms`), the
guard (:mod:`.guard`) and the pipeline that runs them (:mod:`.pipeline`)."""
