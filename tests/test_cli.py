"""cli: what the commands read, apart from the Kedro project around them
(tests/e2e runs them in real projects, as a user types them)."""

from __future__ import annotations

import s3fs
from kedro.io.core import Version

from kedro_keras import KerasModelDataset


def test_prune_counts_a_version_saved_by_another_process_since_the_last_listing(
    s3_bucket, s3_credentials, trained_model
):
    """A long-lived process (a notebook) lists the versions, another process
    saves one more: the next prune must see both, not s3fs's cached listing."""
    dataset = KerasModelDataset(
        filepath=f"{s3_bucket}/model.keras", credentials=s3_credentials, version=Version(None, None)
    )
    dataset.save(trained_model)
    assert len(dataset.stored_versions()) == 1

    # "Another process": a filesystem of its own, not the one fsspec shares in this process.
    elsewhere = s3fs.S3FileSystem(**s3_credentials, skip_instance_cache=True)
    (first,) = elsewhere.ls(f"{s3_bucket}/model.keras")
    newer = "2999-01-01T00.00.00.000Z"
    elsewhere.copy(f"{first}/model.keras", f"{s3_bucket}/model.keras/{newer}/model.keras")

    versions = [version.name for version in dataset.stored_versions()]
    assert versions[0] == newer and len(versions) == 2
