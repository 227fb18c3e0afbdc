"""Listing an S3 prefix of many objects, the way ingest accounts for every file, on a local S3 server.

Starts moto's S3 server on 127.0.0.1, puts N small objects (default 20,000) under one prefix, then times
in one run: imgshards' listing (pyarrow, the object store's own paging, one native call) and Hadoop's
recursive listFiles over py4j (one round trip per file, what ingest did before), both through S3A's
settings. Prints a table.

    .venv/bin/python benchmarks/bench_listing.py [--objects 20000]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=20_000)
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_REGION", "us-east-1")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="bench", Key=f"raw/c{i % 10}/img_{i:06d}.jpg", Body=b"x"),
                          range(args.objects)))
        print(f"put {args.objects} objects in {time.perf_counter() - start:.1f} s", file=sys.stderr)

        from imgshards.config import load_config
        from imgshards.io import storage

        from common import local_session

        spark = local_session("local[1]", "bench-listing")
        spark.sparkContext.setLogLevel("ERROR")
        storage.configure_hadoop(spark, load_config(overrides=[f"storage.s3.endpoint={endpoint}"]))
        rows = []
        for name, lister in (("imgshards (pyarrow, bulk)", lambda: storage.list_files(spark, "s3a://bench/raw")),
                             ("Hadoop listFiles over py4j", lambda: storage.list_hadoop(spark, "s3a://bench/raw"))):
            start = time.perf_counter()
            count = sum(1 for _ in lister())
            seconds = time.perf_counter() - start
            rows.append((name, count, seconds))
        spark.stop()
    finally:
        server.terminate()
    print(f"| listing {args.objects} objects on a local S3 server | files | seconds | files/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, count, seconds in rows:
        print(f"| {name} | {count} | {seconds:.1f} | {count / seconds:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
