"""DICOM in → DICOM SEG out: the reader's conversions, the SEG writer (every IOD, BINARY/FRACTIONAL, empty masks,
dciodvfy, segread round trip) and ``fanet dicom_infer`` end to end, whose masks equal ``fanet infer`` on the same
pixels."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import fire
import highdicom as hd
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from dicom_support import DCIODVFY, INFER, dciodvfy_errors, fanet_infer_png, smooth_rgb
from fanet_monai.cli import FanetCLI
from fanet_monai.data.readers import BitmapReader
from fanet_monai.dicom import DicomReader, SourceError, check_source
from fanet_monai.dicom.pipeline import dicom_infer
from fanet_monai.dicom.predictor import ModelIdentity
from fanet_monai.dicom.reader import decode_frame, read_header
from fanet_monai.dicom.samples import _jpeg, make_source, save
from fanet_monai.errors import InputError
from fanet_monai.dicom.seg import UNCODED_SCHEME, SegSettings, build_segmentations, seg_uids

H, W = 50, 62  # odd, non-square
MODEL = ModelIdentity("fanet-monai", "0.1.0", "0.1.0", "0123456789abcdef" * 4)
#: what a polyp model's run declares (label_names, label_codes in its run.json)
POLYP = SegSettings(label_names={"1": "Polyp"}, label_codes={"1": {
    "category": ["49755003", "SCT", "Morphologically abnormal structure"], "type": ["41329004", "SCT", "Polyp"]}})
PHI = ("Doe^Jane", "PID-0001", "19700101")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)")


@pytest.fixture(scope="module")
def rgb():
    return smooth_rgb(H, W, seed=1)


def bad_instances(folder: Path, rgb: np.ndarray) -> dict[str, Path]:
    """SR, RTSTRUCT, SEG, missing PixelData, unsupported transfer syntax (H.264), corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    sr = make_source(rgb, "ES")
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    sr.Modality = "SR"
    out["sr"] = save(sr, folder / "sr.dcm")
    rt = make_source(rgb, "ES")
    del rt.PixelData
    rt.SOPClassUID = rt.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rt.Modality = "RTSTRUCT"
    out["rtstruct"] = save(rt, folder / "rtstruct.dcm")
    source = make_source(rgb, "ES")
    seg = build_segmentations(source, [rgb[..., 0] > 128], MODEL)[0]
    out["seg"] = save(seg, folder / "seg.dcm")
    nopix = make_source(rgb, "ES")
    del nopix.PixelData
    out["no_pixels"] = save(nopix, folder / "nopixels.dcm")
    h264 = make_source(rgb, "ES", jpeg=True)
    h264.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264: no pydicom decoder
    out["h264"] = save(h264, folder / "video.dcm")
    corrupt = folder / "corrupt.dcm"
    corrupt.write_bytes(b"\x00garbage, not DICOM" * 50)
    out["corrupt"] = corrupt
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(Path(save(make_source(rgb, "ES"), folder / "tmp.dcm")).read_bytes()[:-2000])
    (folder / "tmp.dcm").unlink()
    out["truncated"] = truncated
    return {k: Path(v) for k, v in out.items()}


@pytest.mark.parametrize("kind,photometric,jpeg", [
    ("ES", "RGB", False), ("ES", "YBR_FULL", False), ("ES", "YBR_FULL_422", False), ("ES", None, True),
    ("OP", "RGB", False), ("SC", "RGB", False), ("MFSC", "RGB", False),
])
def test_reader_gives_rgb_like_the_bitmap_reader(tmp_path, rgb, kind, photometric, jpeg):
    pixels = np.stack([rgb, rgb[::-1]]) if kind == "MFSC" else rgb
    path = save(make_source(pixels, kind, photometric, jpeg), tmp_path / "x.dcm")
    png = tmp_path / "x.png"
    from PIL import Image

    if jpeg:  # lossy: compare with Pillow's decoding of the same JPEG stream
        import io

        from fanet_monai.dicom.samples import _jpeg

        Image.open(io.BytesIO(_jpeg(rgb))).convert("RGB").save(png)
    else:
        Image.fromarray(rgb).save(png)
    expected = LoadImage(reader=BitmapReader(), image_only=True, ensure_channel_first=True, dtype=None)(str(png))
    got = LoadImage(reader=DicomReader(frame=0 if kind in ("MFSC", "OP") else None), image_only=True,
                    ensure_channel_first=True, dtype=None)(path)
    assert got.shape == expected.shape == (3, W, H) and got.meta["source_dtype"] == "uint8"
    error = (got.float() - expected.float()).abs().mean().item()
    if jpeg:  # libjpeg and Pillow upsample chroma slightly differently
        assert error < 1
    elif photometric == "YBR_FULL_422":  # lossy chroma subsampling
        assert error < 6
    elif photometric == "YBR_FULL":  # 8-bit YCbCr round trip: off by at most one level
        assert (got.float() - expected.float()).abs().max() <= 2
    else:
        assert error == 0
    if kind == "MFSC":
        second = DicomReader(frame=1)
        array, meta = second.get_data(second.read(path))
        assert np.array_equal(np.moveaxis(array, 0, 1), rgb[::-1]) and meta["frame"] == 1


def test_monochrome1_is_inverted_and_16_bit_kept(tmp_path):
    gray = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 20
    ds = read_header(save(make_source(gray, "SC", "MONOCHROME1"), tmp_path / "m1.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(decode_frame(ds), gray) and decode_frame(ds).dtype == np.uint16
    image = LoadImage(reader=DicomReader(), image_only=True, ensure_channel_first=True, dtype=None)(
        str(tmp_path / "m1.dcm"))
    assert image.shape == (1, W, H) and image.meta["source_dtype"] == "uint16"


def test_multiframe_without_frame_is_rejected_clearly(tmp_path, rgb):
    path = save(make_source(np.stack([rgb, rgb]), "MFSC"), tmp_path / "mf.dcm")
    with pytest.raises(SourceError, match=r"mf.dcm: SOP Instance UID .*: has 2 frames"):
        DicomReader().read(path)


def test_bad_instances_get_one_clear_reason(tmp_path, rgb):
    bad = bad_instances(tmp_path, rgb)
    reasons = {}
    for name, path in bad.items():
        with pytest.raises(SourceError) as info:
            ds = read_header(path)
            check_source(ds, path)
            decode_frame(ds)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        reasons[name] = message
    assert "Structured Report" in reasons["sr"] and "RTSTRUCT" in reasons["rtstruct"]
    assert "Segmentation (SEG)" in reasons["seg"] and "has no PixelData" in reasons["no_pixels"]
    assert "1.2.840.10008.1.2.4.102" in reasons["h264"] and "not supported" in reasons["h264"]
    assert "not a readable DICOM file" in reasons["corrupt"]
    assert "truncated" in reasons["truncated"]
    for name in ("sr", "rtstruct", "seg", "no_pixels", "h264"):
        assert read_header(bad[name]).SOPInstanceUID in reasons[name]


@needs_dciodvfy
@pytest.mark.parametrize("kind", ["ES", "OP", "SC", "MFSC", "MFSC_GRAY"])
@pytest.mark.parametrize("fractional", [False, True])
def test_seg_for_every_iod_is_valid_and_reads_back(tmp_path, rgb, kind, fractional):
    frames = {"MFSC": np.stack([rgb, rgb[::-1], rgb]), "MFSC_GRAY": np.stack([rgb[..., 0]] * 2),
              "SC": rgb[..., 0]}.get(kind, rgb)
    source = make_source(frames, kind)
    n = int(source.get("NumberOfFrames", 1))
    rng = np.random.default_rng(0)
    masks = [rng.random((H, W)).astype(np.float32) for _ in range(n)]
    if not fractional:
        masks = [m > 0.5 for m in masks]
        masks[-1][:] = False  # an empty mask among them
    segs = build_segmentations(source, masks, MODEL, POLYP, fractional=fractional)
    series_uid, uids = seg_uids(source, MODEL)
    assert len(segs) == (n if kind in ("OP", "MFSC", "MFSC_GRAY") else 1) == len(uids)
    for k, seg in enumerate(segs):
        path = tmp_path / f"seg{k}.dcm"
        seg.save_as(path)
        assert dciodvfy_errors(path) == []
        back = hd.seg.segread(path)
        assert back.SOPInstanceUID == uids[k] and back.SeriesInstanceUID == series_uid
        assert back.StudyInstanceUID == source.StudyInstanceUID and back.SeriesInstanceUID != source.SeriesInstanceUID
        assert back.SegmentationType == ("FRACTIONAL" if fractional else "BINARY")
        referenced = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert referenced.ReferencedSOPClassUID == source.SOPClassUID
        derivation = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPClassUID == source.SOPClassUID
        if n > 1:
            assert derivation.ReferencedFrameNumber == k + 1
        stored = back.pixel_array.reshape(H, W)
        if fractional:
            assert np.abs(stored.astype(float) - masks[k] * 255).max() <= 0.5 + 1e-6
        else:
            assert np.array_equal(stored.astype(bool), masks[k])
        segment = back.SegmentSequence[0]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "41329004"
        assert segment.SegmentLabel == "Polyp"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert MODEL.weights_sha256 in algorithm.AlgorithmParameters and "0.1.0" in algorithm.AlgorithmVersion
        assert MODEL.key in back.SeriesDescription


@needs_dciodvfy
def test_a_run_without_declared_codes_gets_an_explicitly_uncoded_segment_never_another_anatomy(tmp_path, rgb,
                                                                                                caplog):
    source = make_source(rgb, "ES")
    with caplog.at_level(logging.WARNING, logger="fanet_monai.dicom.seg"):
        seg = build_segmentations(source, [np.ones((H, W), bool)], MODEL, SegSettings(label_names={"1": "Vessel"}))[0]
    assert "declares no codes" in caplog.text and "--label_codes" in caplog.text
    seg.save_as(tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    segment = hd.seg.segread(tmp_path / "seg.dcm").SegmentSequence[0]
    assert segment.SegmentLabel == "Vessel"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == UNCODED_SCHEME
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Uncoded: Vessel"
    assert "41329004" not in str(segment)  # no bundle-wide polyp default any more
    unnamed = SegSettings().segment(1)
    assert unnamed[0] == "Segment 1" and unnamed[3] is False
    with pytest.raises(ValueError, match=r"must be \[value, scheme designator, meaning\]"):
        SegSettings(property_category=["1", "SCT"], property_type=["2", "SCT", "x"]).segment(1)


@needs_dciodvfy
def test_dicom_infer_matches_fanet_infer_and_reports_bad_sources(tmp_path, tiny_bundle_root, rgb, caplog, capsys):
    caplog.set_level(logging.INFO)
    inputs = tmp_path / "in"
    study = generate_uid()
    sources = {
        "es": make_source(rgb, "ES", study_uid=study),
        "op": make_source(rgb, "OP", study_uid=study),
        "sc_m1": make_source(rgb[..., 0], "SC", "MONOCHROME1", study_uid=study),
        "jpeg": make_source(smooth_rgb(64, 64, 2), "ES", jpeg=True, study_uid=study),
        "mfsc": make_source(np.stack([rgb, rgb[::-1]]), "MFSC", study_uid=study),
    }
    (inputs / "sub").mkdir(parents=True)
    for name, ds in sources.items():
        save(ds, inputs / "sub" / f"{name}.dcm")
    bad = bad_instances(inputs / "bad", rgb)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        fire.Fire(FanetCLI, command=["dicom_infer", str(inputs), str(out), "--bundle_root", str(tiny_bundle_root),
                                     *[f"--{k}={v}".replace(" ", "") for k, v in INFER.items()]])
    assert exit_info.value.code == 3  # EXIT_PARTIAL: some sources failed
    logged = caplog.text + capsys.readouterr().out  # the bundle's logging.conf re-routes logging to stdout
    failures = {line[line.index("FAILED "):] for line in logged.splitlines() if "FAILED " in line}
    assert len(failures) == len(bad)
    for path in bad.values():
        assert sum(str(path) in line for line in failures) == 1
    written = sorted(out.glob("*.seg.dcm"))
    assert len(written) == 4 + 2  # one per single-frame source, one per frame of the 2-frame SC
    assert not list(out.glob(".*part"))

    pixels = {}
    for name, ds in sources.items():
        if name == "mfsc":
            pixels[f"{name}-1"], pixels[f"{name}-2"] = rgb, rgb[::-1]
        else:
            pixels[name] = decode_frame(read_header(inputs / "sub" / f"{name}.dcm"))
    expected = fanet_infer_png(tiny_bundle_root, pixels, tmp_path)
    assert all(0.01 < m.mean() < 0.9 for m in expected.values())  # the trained weights find the blobs
    for key, mask in expected.items():
        name, _, frame = key.partition("-")
        uid = sources[name].SOPInstanceUID
        seg_path = out / (f"{uid}-frame{frame}.seg.dcm" if frame else f"{uid}.seg.dcm")
        assert dciodvfy_errors(seg_path) == []
        seg = hd.seg.segread(seg_path)
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
        assert np.array_equal(seg.pixel_array.reshape(mask.shape).astype(bool), mask), key
        segment = seg.SegmentSequence[0]  # what the run declared, not a bundle-wide default
        assert segment.SegmentLabel == "Blob" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"

    logged += capsys.readouterr().out
    for value in PHI:
        assert value not in logged


@needs_dciodvfy
def test_dicom_infer_fractional_thresholds_to_the_binary_mask(tmp_path, tiny_bundle_root, rgb):
    from fanet_monai.dicom.pipeline import dicom_infer

    path = save(make_source(rgb, "ES"), tmp_path / "es.dcm")
    binary = dicom_infer([path], tmp_path / "bin", str(tiny_bundle_root), **INFER)
    fractional = dicom_infer([path], tmp_path / "frac", str(tiny_bundle_root), fractional=True, **INFER)
    assert binary.done == fractional.done == 1 and not binary.failed
    [b], [f] = sorted((tmp_path / "bin").glob("*.dcm")), sorted((tmp_path / "frac").glob("*.dcm"))
    assert dciodvfy_errors(f) == []
    probs = hd.seg.segread(f).pixel_array.reshape(H, W) / 255.0
    mask = hd.seg.segread(b).pixel_array.reshape(H, W).astype(bool)
    undecided = np.abs(probs - 0.5) <= 1 / 255  # 8-bit storage rounds probabilities at the threshold
    assert np.array_equal((probs > 0.5)[~undecided], mask[~undecided])
    assert pydicom.dcmread(f).MaximumFractionalValue == 255


ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em" / "images"


@pytest.mark.skipif(not ISBI.is_dir(), reason=f"ISBI 2012 EM slices not present at {ISBI}")
def test_isbi_slices_as_monochrome_and_jpeg_dicom_match_fanet_infer(tmp_path, tiny_bundle_root):
    from PIL import Image

    from fanet_monai.dicom.pipeline import dicom_infer

    slices = sorted(ISBI.glob("*.png"))[:2]
    crops = [np.asarray(Image.open(p).convert("L"))[100:150, 200:262] for p in slices]  # 50 x 62
    sources = {"m2": make_source(crops[0], "SC"), "m1": make_source(crops[1], "SC", "MONOCHROME1"),
               "jpeg": make_source(crops[0], "SC", jpeg=True)}
    (tmp_path / "in").mkdir()
    for name, ds in sources.items():
        save(ds, tmp_path / "in" / f"{name}.dcm")
    summary = dicom_infer([tmp_path / "in"], tmp_path / "out", str(tiny_bundle_root), **INFER)
    assert summary.done == 3 and not summary.failed
    pixels = {name: decode_frame(read_header(tmp_path / "in" / f"{name}.dcm")) for name in sources}
    assert np.array_equal(pixels["m1"], crops[1])  # MONOCHROME1 stored inverted, read back as the slice
    expected = fanet_infer_png(tiny_bundle_root, pixels, tmp_path)
    for name, ds in sources.items():
        seg = hd.seg.segread(tmp_path / "out" / f"{ds.SOPInstanceUID}.seg.dcm")
        assert np.array_equal(seg.pixel_array.reshape(H, W).astype(bool), expected[name]), name


def test_inference_config_keeps_the_monai_deploy_contract(tmp_path, tiny_bundle_root, rgb):
    """MONAI Deploy's MonaiBundleInferenceOperator (not installed: it needs holoscan) reads the ids preprocessing,
    inferer, postprocessing and device, calls ``inferer(inputs=..., network=...)`` with keywords and hands the
    postprocessing an item without the batch dimension: the channel dimension must survive it."""
    import torch

    from fanet_monai.dicom.predictor import BundlePredictor

    predictor = BundlePredictor(tiny_bundle_root, **INFER)
    for id in ("preprocessing", "inferer", "postprocessing", "device"):
        assert id in predictor.workflow.parser
    item = predictor._load(save(make_source(rgb, "ES"), tmp_path / "es.dcm"), None)
    with torch.no_grad():
        logits = predictor.inferer(inputs=item["image"][None], network=predictor.network)
    assert logits.shape == (1, 1, 64, 64)
    out = {"image": item["image"], "pred": logits[0]}
    for transform in predictor.postprocessing:
        out = transform(out)
    assert out["pred"].shape == (1, W, H)  # channel kept, back at the source size (reader's W, H order)


# -- dicom_infer: duplicates, pixel data length, no DICOM files, output folder ----------------------------------------
SMALL = 32


def unusable_copy(good: Path, broken: Path, how: str) -> None:
    """A broken copy of ``good`` (same SOP Instance UID): the file cut inside its pixel data, or its JPEG stream cut."""
    if how == "cut_file":
        broken.write_bytes(good.read_bytes()[:-500])
        return
    ds = read_header(good)
    frame = _jpeg(smooth_rgb(SMALL, SMALL, seed=3))
    jpeg = make_source(smooth_rgb(SMALL, SMALL, seed=3), "ES", jpeg=True, study_uid=ds.StudyInstanceUID,
                       series_uid=ds.SeriesInstanceUID)
    jpeg.SOPInstanceUID = jpeg.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    jpeg.PixelData = encapsulate([frame[:len(frame) // 3]])
    save(jpeg, broken)


@pytest.mark.parametrize("how", ["cut_file", "cut_jpeg_stream"])
def test_dicom_infer_segments_the_copy_that_decodes(tmp_path, tiny_bundle_root, how):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = Path(save(make_source(smooth_rgb(SMALL, SMALL, seed=3), "ES"), inputs / "b.dcm"))
    unusable_copy(good, inputs / "a.dcm", how)  # listed first
    summary = dicom_infer([inputs], tmp_path / "out", str(tiny_bundle_root), **INFER)
    uid = read_header(good).SOPInstanceUID
    assert (summary.done, summary.segs, summary.failed) == (1, 1, [])
    assert (tmp_path / "out" / f"{uid}.seg.dcm").is_file()
    [note] = summary.notes
    assert str(inputs / "a.dcm") in note and str(good) in note and uid in note and "\n" not in note


def test_native_pixel_data_must_hold_exactly_what_the_header_declares(tmp_path):
    rgb = smooth_rgb(2 * SMALL, 2 * SMALL, seed=4)
    larger = make_source(rgb, "ES")  # 64 x 64 of pixels declared as 32 x 32
    larger.Rows = larger.Columns = SMALL
    shorter = make_source(rgb, "ES")
    shorter.PixelData = shorter.PixelData[:-6]
    odd = make_source(rgb[:31, :31, 0], "SC")  # 961 bytes and the padding byte
    paths = {name: Path(save(ds, tmp_path / f"{name}.dcm")) for name, ds in
             [("larger", larger), ("shorter", shorter), ("odd", odd)]}
    check_source(read_header(paths["odd"]), paths["odd"])
    for name in ("larger", "shorter"):
        where = re.escape(str(paths[name]))
        with pytest.raises(SourceError, match=rf"^{where}: SOP Instance UID .*: PixelData holds") as info:
            check_source(read_header(paths[name]), paths[name])
        assert "\n" not in str(info.value)
    summary = dicom_infer([paths["larger"]], tmp_path / "out", str(tmp_path))  # refused before the model loads
    assert summary.segs == 0 and len(summary.failed) == 1 and "PixelData holds 12288 bytes" in summary.failed[0]
    assert "32 × 32 × 3 × 1 × 1 = 3072" in summary.failed[0]


def test_dicom_infer_without_dicom_files_is_an_input_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = re.escape(str(empty))
    with pytest.raises(InputError, match=rf"^{where}: no DICOM files found; give a DICOM file or a folder"):
        dicom_infer([empty], tmp_path / "out", str(tmp_path))
    (empty / "README.txt").write_text("scans follow\n")
    with pytest.raises(InputError, match=rf"^{where}: no DICOM files found \(1 other file\(s\) ignored\); give"):
        dicom_infer([empty], tmp_path / "out", str(tmp_path))


def test_dicom_infer_notes_stray_files_and_fails_broken_dicom(tmp_path, rgb):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "README.txt").write_text("scans follow\n")
    full = Path(save(make_source(rgb, "ES"), tmp_path / "full.dcm")).read_bytes()
    (inputs / "header_only.dcm").write_bytes(full[:200])
    (inputs / "broken.dcm").write_bytes(b"\x00garbage, not DICOM" * 50)
    summary = dicom_infer([inputs], tmp_path / "out", str(tmp_path))  # no usable source: no model needed
    assert len(summary.failed) == 2 and not any("README" in line for line in summary.failed)
    assert summary.notes == [f"{inputs / 'README.txt'}: not a DICOM file, ignored"]
    [header_only] = [line for line in summary.failed if "header_only.dcm" in line]
    assert header_only.startswith(str(inputs / "header_only.dcm")) and "has no PixelData" not in header_only
    assert "is truncated: the file ends (200 bytes) before its pixel data" in header_only
    assert any(line.startswith(f"{inputs / 'broken.dcm'}: not a readable DICOM file") for line in summary.failed)
    for value in PHI:
        assert not any(value in line for line in summary.failed + summary.notes)


def test_dicom_infer_checks_the_output_folder_first(tmp_path, rgb):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save(make_source(rgb, "ES"), inputs / "es.dcm")
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "out"
    # tmp_path holds no weights: loading the model first would raise FileNotFoundError instead
    where = re.escape(str(out))
    with pytest.raises(InputError, match=rf"^{where}: cannot write to the output folder \(Not a directory\); choose"):
        dicom_infer([inputs], out, str(tmp_path))
