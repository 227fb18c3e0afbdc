"""spark-submit entry file of the report job (Databricks spark_python_task and EMR steps run it too).

The job itself is imgshards.jobs.report, in the package, so wheel tasks run the same code.
"""
import sys

from imgshards.jobs.report import main

if __name__ == "__main__":
    sys.exit(main())
