"""SQL sources against a real PostgreSQL server: Debian's package (`make test` installs it), a
throwaway cluster in a temp dir on a free 127.0.0.1 port, started here and stopped after."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from labelloop import data
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings
from tests.helpers import free_port

pytestmark = pytest.mark.integration


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `make postgres` (apt-get install postgresql)")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres():
    """(SQLAlchemy URL, psycopg2 connect kwargs) of a fresh server; stopped at the end."""
    import psycopg2

    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="labelloop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    pgdata, port = root / "data", free_port()
    subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "labelloop",
                              "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(root / "log"),
                              "-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        conn_args = {"host": "127.0.0.1", "port": port, "user": "labelloop", "dbname": "postgres"}
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg2.connect(**conn_args).close()
                break
            except psycopg2.OperationalError:
                assert time.monotonic() < deadline, (root / "log").read_text()[-2000:]
                time.sleep(0.3)
        yield f"postgresql+psycopg2://labelloop@127.0.0.1:{port}/postgres", conn_args
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w",
                                  "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_train_test_sources_and_pool(postgres, tmp_path):
    import psycopg2

    url, conn_args = postgres
    reviews = [(f"review number {i} &amp; more", stars) for i, stars in
               enumerate([1, 5, 3, 5, 1, 2, 4, 5, 1, 3] * 4)]
    with psycopg2.connect(**conn_args) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE reviews (id serial, body text, stars integer, part text)")
        cur.executemany("INSERT INTO reviews (body, stars, part) VALUES (%s, %s, %s)",
                        [(b, s, "test" if i % 5 == 0 else "train")
                         for i, (b, s) in enumerate(reviews)])
        cur.execute("INSERT INTO reviews (body, stars, part) VALUES (NULL, 5, 'train')")
        cur.execute("CREATE TABLE unlabelled (body text)")
        cur.executemany("INSERT INTO unlabelled VALUES (%s)",
                        [("a new review",), ("review number 3 &amp; more",), ("",)])
    s = Settings(
        data_dir=str(tmp_path / "data"),
        task={"labels": ["negative", "neutral", "positive"]},
        dataset={"train": {"url": url, "query": "SELECT body, stars FROM reviews WHERE part = 'train'"},
                 "test": {"url": url, "query": "SELECT body, stars FROM reviews WHERE part = 'test'"},
                 "text_column": "body", "label_column": "stars",
                 "label_map": {1: "negative", 3: "neutral", 5: "positive"},
                 "cleaning": {"html_entities": True}},
        pool={"source": {"url": url, "table": "unlabelled"}, "text_column": "body"})
    splits = data.load_splits(s.dataset, task_from_settings(s))
    assert (len(splits.train), len(splits.test)) == (28, 4)  # stars 2 and 4 map to nothing
    assert set(splits.train["label"]) == {"negative", "neutral", "positive"}
    assert all("&amp;" not in t for t in splits.train["text"])
    train_report = splits.reports[0]
    assert train_report.null_text == 1 and train_report.unmapped_label == 4
    assert splits.reports[1].unmapped_label == 4
    assert splits.sources[0].kind == "sql" and "postgresql" in splits.sources[0].uri

    from annotation import pool
    from labelloop.cleaning import Cleaning

    got = pool.build_pool(s, Cleaning(html_entities=True, whitespace="strip"))
    assert got.texts == ["a new review"] and got.labelled == 1 and got.empty == 1


def test_postgres_failures_are_one_clear_error(postgres, tmp_path):
    url, _ = postgres
    task = task_from_settings(Settings())
    with pytest.raises(data.DataError, match=r"query on postgresql\+psycopg2://labelloop@.* "
                                             r"failed: .*nope.* does not exist"):
        data.load_labelled(Settings(dataset={"train": {"url": url, "query": "SELECT * FROM nope"}}
                                    ).dataset, task)
    dead = url.replace(url.split(":")[-1].split("/")[0], str(free_port()))
    with pytest.raises(data.DataError, match="cannot connect to the SQL source"):
        data.load_labelled(Settings(dataset={"train": {"url": dead, "table": "reviews"}}).dataset,
                           task)
    secret = url.replace("labelloop@", "labelloop:hunter2@")
    with pytest.raises(data.DataError) as err:
        data.load_labelled(Settings(dataset={"train": {"url": secret, "query": "SELECT x"}}).dataset,
                           task)
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    assert not (tmp_path / "data").exists()  # nothing written anywhere
