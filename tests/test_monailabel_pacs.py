"""MONAI Label on the PACS (issue 21, item 5): a real MONAI Label 0.8.5 server whose datastore is a real Orthanc
(``--studies http://127.0.0.1:PORT/dicom-web``, MONAI Label's DICOMweb datastore), running the packaged 3-D bundle.
``/infer`` on a CT series stored in Orthanc returns the label volume on the series' grid (what ``fanet infer``
gives for the same series); a label saved through MONAI Label lands in Orthanc as a DICOM SEG of that series.

The bundle has the 3-D echo weights of :mod:`test_monailabel_volumes` (the answer is the start mask: Otsu's), so
the answer is known without training.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from dicom_support import DICOMWEB_PLUGIN, ORTHANC, ORTHANC_PASSWORD, ORTHANC_USER
from fanet_monai.cli import run
from fanet_monai.data import make_volume_dataset
from fanet_monai.dicom.pacs import connect
from fanet_monai.dicom.samples import make_ct_series, save
from fanet_monai.dicom.series import find_series, read_series
from fanet_monai.packaging import package_bundle
from test_monailabel_server import download_app, monailabel_python, running_server
from test_monailabel_volumes import SETTINGS, echo_run

requests = pytest.importorskip("requests")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
                       reason="Orthanc or its DICOMweb plugin is not installed (.ci/run installs them, as root)"),
]
CREDENTIALS = {"username": ORTHANC_USER, "password": ORTHANC_PASSWORD}


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory):
    from dicom_support import OrthancServer

    python = monailabel_python()
    tmp = tmp_path_factory.mktemp("monailabel_pacs")
    orthanc = OrthancServer(tmp / "orthanc")
    orthanc.start()
    try:
        app = download_app(python, tmp)
        run_root = echo_run(tmp / "run")
        package_bundle(app / "model" / "fanet3d", run_root, layers=("volume",), label_names={"1": "tube"},
                       **SETTINGS)
        data = make_volume_dataset(tmp / "data", num_volumes=1, shape=(24, 20, 16), kind="tubes", seed=11)
        volume = np.asarray(nib.load(next((data / "images").iterdir())).dataobj)
        hounsfield = (volume * 1000 - 500).astype(np.int16)  # tubes bright on a dark background
        series = make_ct_series(hounsfield, spacing=(1.0, 1.0, 1.0))
        folder = tmp / "series"
        folder.mkdir()
        for ds in series:
            orthanc.upload(save(ds, folder / f"{ds.SOPInstanceUID}.dcm"))
        env = {"MONAI_LABEL_DICOMWEB_USERNAME": ORTHANC_USER, "MONAI_LABEL_DICOMWEB_PASSWORD": ORTHANC_PASSWORD,
               "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "dicomweb-cache")}
        with running_server(python, tmp, "fanet3d", studies=orthanc.dicomweb, env=env) as (url, log):
            yield {"url": url, "orthanc": orthanc, "series": series, "folder": folder, "run": run_root, "tmp": tmp,
                   "log": log}
    finally:
        orthanc.stop()


def test_active_learning_picks_the_unlabelled_series_from_orthanc(pacs_server):
    response = requests.post(f"{pacs_server['url']}/activelearning/random", json={}, timeout=60)
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["id"] == pacs_server["series"][0].SeriesInstanceUID  # QIDO-RS: the only CT series


def test_infer_on_a_series_from_orthanc_returns_the_label_on_the_series_grid(pacs_server):
    uid = pacs_server["series"][0].SeriesInstanceUID
    response = requests.post(f"{pacs_server['url']}/infer/fanet3d", params={"image": uid, "output": "image"},
                             data={"params": "{}"}, timeout=300)
    assert response.status_code == 200, response.text[:2000] + pacs_server["log"].read_text()[-3000:]
    answer = pacs_server["tmp"] / "answer.nii.gz"
    answer.write_bytes(response.content if response.content[:2] == b"\x1f\x8b" else gzip.compress(response.content))
    label = nib.load(answer)
    (instances,) = find_series(pacs_server["folder"]).values()
    volume = read_series(instances)
    assert label.shape == volume.array.shape
    assert np.allclose(label.affine, volume.affine, atol=1e-3)  # the series' grid, as ours reads it
    values = np.asarray(label.dataobj)
    assert set(np.unique(values)) <= {0, 1} and 0.01 < values.mean() < 0.6

    # fanet infer on the same series exported by our reader: the same voxels
    nifti = pacs_server["tmp"] / "nifti"
    nifti.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(volume.array, volume.affine), nifti / "series.nii.gz")
    assert run(["infer", str(nifti), str(pacs_server["tmp"] / "masks"), "--bundle_root", str(pacs_server["run"]),
                "--num_workers", "0", *_settings_args()]) == 0
    ours = np.asarray(nib.load(pacs_server["tmp"] / "masks" / "series.nii.gz").dataobj)
    assert (ours == values).mean() > 0.999


def _settings_args() -> list[str]:
    args = []
    for key, value in SETTINGS.items():
        if key in ("batch_size", "show_progress"):
            continue
        args += [f"--{key}", json.dumps(value).replace(" ", "") if not isinstance(value, str) else value]
    return args


def test_a_label_saved_through_monai_label_lands_in_orthanc_as_a_seg(pacs_server):
    uid = pacs_server["series"][0].SeriesInstanceUID
    (instances,) = find_series(pacs_server["folder"]).values()
    volume = read_series(instances)
    label = np.zeros(volume.array.shape, np.uint8)
    label[4:14, 3:12, 2:10] = 1
    upload = gzip.compress(nib.Nifti1Image(label, volume.affine).to_bytes())
    response = requests.put(f"{pacs_server['url']}/datastore/label", params={"image": uid, "tag": "final"},
                            data={"params": json.dumps({"label_info": [{"name": "tube"}]})},
                            files={"label": ("label.nii.gz", upload, "application/gzip")}, timeout=300)
    assert response.status_code == 200, response.text[:2000] + pacs_server["log"].read_text()[-3000:]
    client = connect(pacs_server["orthanc"].dicomweb, CREDENTIALS)
    (seg_ref,) = client.search_for_instances(search_filters={"Modality": "SEG"})
    seg = client.retrieve_instance(seg_ref["0020000D"]["Value"][0], seg_ref["0020000E"]["Value"][0],
                                   seg_ref["00080018"]["Value"][0])
    assert seg.StudyInstanceUID == pacs_server["series"][0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.SegmentSequence[0].SegmentLabel == "tube"
    frames = int(seg.NumberOfFrames)
    assert frames == 8  # the slices holding the label, 2..9
