"""spark-submit entry file of the doctor job (Databricks spark_python_task and EMR steps run it too).

The job itself is imgshards.jobs.doctor, in the package, so wheel tasks run the same code.
"""
import sys

from imgshards.jobs.doctor import main

if __name__ == "__main__":
    sys.exit(main())
