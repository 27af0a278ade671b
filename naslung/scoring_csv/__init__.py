"""The stages of CSV batch scoring (``naslung score``), each over :class:`~naslung.scoring_csv.rows.RowResult`.

``rows`` (one result per input row), ``scans`` (series uid -> scan file, only inside the scan root),
``extract`` (one scan read at a time, its patches cut), ``requests`` (patches sent to an injected scorer
in requests, several in flight), ``overlays`` (CAM PNGs), ``results_file`` (write / resume the results
CSV), ``summary`` (counts and timings), ``manifest`` (the run manifest JSON), ``drift`` (acquisition
and score drift against the model's reference profile, PNG plot) and ``inbox`` (a folder of CSVs). The
pipeline that joins them, with the CSV check, is :func:`naslung.score_csv.score_csv`.
"""
