"""Generate the job definitions under deploy/ from deploy/contract.yaml (see imgshards.deploy).

    .venv/bin/python scripts/gen_deploy.py           # write them
    .venv/bin/python scripts/gen_deploy.py --check   # exit 1 if one differs from what the contract makes
"""
import sys

from imgshards.deploy.generate import main

if __name__ == "__main__":
    sys.exit(main())
