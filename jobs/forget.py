"""spark-submit entry file of the forget job (Databricks spark_python_task and EMR steps run it too).

The job itself is imgshards.jobs.forget, in the package, so wheel tasks run the same code.
"""
import sys

from imgshards.jobs.forget import main

if __name__ == "__main__":
    sys.exit(main())
