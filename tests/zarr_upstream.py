"""zarr-python's own tests, fetched from its sdist, run with gpuzarr's codec pipeline.

Used by ``tests/test_zarr_upstream.py`` (and runnable by hand:
``python tests/zarr_upstream.py [pytest args]`` prints where the tests are and runs them).

:func:`upstream_tests` downloads the sdist of the *installed* zarr version once
(``pip download --no-binary :all: --no-deps zarr==<version>``), keeps its ``tests/``
directory in a cache (``$GPUZARR_ZARR_SDIST_CACHE``, default ``~/.cache/gpuzarr/zarr-sdist``)
and adds three files beside zarr's tests, all derived mechanically:

* ``test_gpuzarr_pipeline_suite.py``: zarr's ``CodecPipelineTests`` subclassed with
  ``pipeline_path = "gpuzarr.GpuzarrCodecPipeline"``;
* ``test_pipeline_parity_gpuzarr.py``: ``test_pipeline_parity.py`` with its second
  pipeline (``_FUSED``) set to gpuzarr's, so every cell compares gpuzarr against
  ``BatchedCodecPipeline`` (contents, store keys, and each reading the other's output);
* in ``test_indexing.py`` and ``test_codecs/`` nothing changes, except that lists
  parametrizing a test over ``BatchedCodecPipeline``/``FusedCodecPipeline`` gain
  ``gpuzarr.GpuzarrCodecPipeline`` (and their ``ids`` a ``"gpuzarr"``).

Every run sets ``ZARR_CODEC_PIPELINE__PATH=gpuzarr.GpuzarrCodecPipeline``, so each test
that does not name a pipeline itself reads through gpuzarr (zarr's ``reset_config``
fixture re-reads that variable). :data:`EXCLUDED` lists the tests deselected, each with
its reason (also in docs/zarr-pipeline.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PIPELINE = "gpuzarr.GpuzarrCodecPipeline"
HERE = Path(__file__).resolve().parent

_SPY = ("spies on the store's async get/get_ranges through an AsyncMock and assumes every pipeline but "
        "FusedCodecPipeline reads sync-capable stores asynchronously; gpuzarr reads LocalStore and MemoryStore "
        "through get_sync/get_ranges_sync like FusedCodecPipeline (same calls; the ZipStore variants, read "
        "asynchronously, run and pass)")
_PRIVATE = ("monkeypatches zarr's private _ShardIndex.get_chunk_slice; gpuzarr decodes shard indexes itself and "
            "never calls it")
_SHARDING = "tests/test_codecs/test_sharding.py::"
_UNIT = "tests/test_codecs/test_sharding_unit.py::"

#: node id (relative to the sdist root) → why it is not run with gpuzarr's pipeline
EXCLUDED: dict[str, str] = {
    **{f"{_SHARDING}{test}[{store}-{loc}]": _SPY
       for test in ("test_sharding_multiple_chunks_partial_shard_read", "test_sharding_duplicate_read_indexes",
                    "test_sharding_partial_shard_read__index_load_fails",
                    "test_sharding_partial_shard_read__chunk_load_fails")
       for store in ("local", "memory") for loc in ("start", "end")},
    **{f"{_SHARDING}test_sharding_partial_shard_read__index_chunk_slice_fails[{store}-{loc}]": _PRIVATE
       for store in ("local", "memory", "zip") for loc in ("start", "end")},
    **{f"{_UNIT}{test}": _SPY
       for test in ("test_load_partial_shard_forwards_global_config_to_get_ranges",
                    "test_load_partial_shard_per_array_config_overrides_global",
                    "test_load_partial_shard_uses_config_defaults")},
}

INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
markers =
    gpu: needs CuPy and a GPU
    s3: needs a mock S3 backend
    slow_hypothesis: slow hypothesis tests
"""

SUITE = f'''"""zarr's codec-pipeline conformance suite, run against gpuzarr's pipeline (generated)."""
from tests.test_codec_pipeline_suite import CodecPipelineTests


class TestGpuzarrPipeline(CodecPipelineTests):
    pipeline_path = "{PIPELINE}"
'''


def cache_root() -> Path:
    return Path(os.environ.get("GPUZARR_ZARR_SDIST_CACHE", Path.home() / ".cache" / "gpuzarr" / "zarr-sdist"))


def _derive(root: Path) -> None:
    """Write the gpuzarr variants beside zarr's tests (idempotent)."""
    tests = root / "tests"
    (tests / "test_gpuzarr_pipeline_suite.py").write_text(SUITE)
    parity = (tests / "test_pipeline_parity.py").read_text()
    fused = '_FUSED = "zarr.core.codec_pipeline.FusedCodecPipeline"'
    if fused not in parity:
        raise RuntimeError(f"{tests / 'test_pipeline_parity.py'} no longer defines {fused}")
    (tests / "test_pipeline_parity_gpuzarr.py").write_text(
        parity.replace(fused, f'_FUSED = "{PIPELINE}"  # gpuzarr: generated from test_pipeline_parity.py'))
    batched = '"zarr.core.codec_pipeline.BatchedCodecPipeline",\n'
    for path in [tests / "test_indexing.py", *sorted((tests / "test_codecs").glob("test_*.py"))]:
        text = path.read_text()
        if f'"{PIPELINE}"' in text:
            continue
        lines = text.splitlines(keepends=True)
        out = []
        for line in lines:
            out.append(line)
            if line.strip() == batched.strip():
                out.append(line.replace("zarr.core.codec_pipeline.BatchedCodecPipeline", PIPELINE))
        text = "".join(out).replace('ids=["batched", "fused"]', 'ids=["batched", "fused", "gpuzarr"]')
        path.write_text(text)
    (root / "gpuzarr-pytest.ini").write_text(INI)


def upstream_tests(version: str | None = None) -> Path:
    """The sdist root of zarr ``version`` (default: the installed one), fetched once and cached."""
    import zarr

    version = version or zarr.__version__
    root = cache_root() / f"zarr-{version}"
    marker = root / ".gpuzarr-ready"
    if not marker.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                            f"zarr=={version}", "-d", tmp], check=True)
            (sdist,) = Path(tmp).glob("zarr-*.tar.gz")
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers()
                           if m.name.startswith(f"zarr-{version}/tests/") or m.name == f"zarr-{version}/pyproject.toml"]
                tar.extractall(tmp, members=members, filter="data")
            staged = Path(tmp) / f"zarr-{version}"
            if not (staged / "tests" / "test_codec_pipeline_suite.py").exists():
                raise FileNotFoundError(f"the zarr {version} sdist has no tests/test_codec_pipeline_suite.py")
            if root.exists():
                import shutil

                shutil.rmtree(root)
            staged.rename(root)
    _derive(root)
    marker.touch()
    return root


def run(targets: list[str], extra: list[str] | None = None, *, stats_file: Path | None = None,
        timeout: float = 3000, deselect: bool = True) -> subprocess.CompletedProcess[str]:
    """Run zarr's tests ``targets`` (paths relative to the sdist root) with gpuzarr's pipeline."""
    root = upstream_tests()
    env = dict(os.environ)
    env["ZARR_CODEC_PIPELINE__PATH"] = PIPELINE
    env.setdefault("GPUZARR_CPU__COMPILED", "eager")  # zarr's tests read through the compiled lane where it applies
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if stats_file is not None:
        env["GPUZARR_UPSTREAM_STATS"] = str(stats_file)
    deselected = [arg for node in EXCLUDED for arg in ("--deselect", node)] if deselect else []
    cmd = [sys.executable, "-m", "pytest", "-c", str(root / "gpuzarr-pytest.ini"), "--rootdir", str(root),
           "-p", "no:cacheprovider", "-p", "zarr_upstream_plugin", "-q", "-rfE", *deselected, *targets,
           *(extra or [])]
    return subprocess.run(cmd, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    result = run(sys.argv[1:] or ["tests/test_gpuzarr_pipeline_suite.py"])
    print(result.stdout[-20000:], result.stderr[-5000:])
    sys.exit(result.returncode)
