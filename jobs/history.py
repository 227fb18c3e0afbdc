"""spark-submit entry file of the history job (Databricks spark_python_task and EMR steps run it too).

The job itself is imgshards.jobs.history, in the package, so wheel tasks run the same code.
"""
import sys

from imgshards.jobs.history import main

if __name__ == "__main__":
    sys.exit(main())
