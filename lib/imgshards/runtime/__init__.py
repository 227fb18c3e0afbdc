"""The driver's Spark runtime helpers: work run beside a stage (:mod:`.background`) and the executors' Python
workers started ahead (:mod:`.workers`).
"""
