"""What a run reports: progress lines (:mod:`.progress`), Prometheus metrics (:mod:`.metrics`), the dataset
report (:mod:`.report`) and the executors' environment check (:mod:`.doctor`).
"""
