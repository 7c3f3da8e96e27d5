import cv2
import numpy as np
import pytest
import torch

from ccm.geometry import (
    HEATMAP_MAPPINGS,
    apply_affine,
    box_to_center_scale,
    boxes_from_keypoints,
    crop_to_heatmap,
    grid_to_image,
    grid_to_image_matrix,
    heatmap_to_crop,
    invert_affine,
    to_pixel_center_heatmap,
    warp_crops,
)

CROP = (256, 192)
HEATMAP = (64, 48)


def regions(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(n, 2, generator=g, dtype=torch.float64) * 500 + 50
    scale = torch.rand(n, 2, generator=g, dtype=torch.float64) * 300 + 20
    rotation = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 80
    points = torch.rand(n, 17, 2, generator=g, dtype=torch.float64) * torch.tensor([48.0, 64.0]) - 2
    return center, scale, rotation, points


def test_box_to_center_scale_fixes_aspect_and_pads():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 420.0], [0.0, 0.0, 300.0, 100.0]])
    center, scale = box_to_center_scale(boxes, aspect_ratio=0.75, padding=1.25)
    torch.testing.assert_close(center, torch.tensor([[60.0, 220.0], [150.0, 50.0]]))
    # Tall box: width grows to 0.75 * 400; wide box: height grows to 300 / 0.75.
    torch.testing.assert_close(scale, torch.tensor([[375.0, 500.0], [375.0, 500.0]]))
    half_height = scale[:, 1] / 1.25 / 2  # unpadded: the tall box's height, the wide one grown
    torch.testing.assert_close(
        torch.stack((center[:, 1] - half_height, center[:, 1] + half_height), -1),
        torch.tensor([[20.0, 420.0], [-150.0, 250.0]]),
    )


def test_degenerate_boxes_get_a_finite_region():
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [30.0, 10.0, 20.0, 5.0]])
    center, scale = box_to_center_scale(boxes, aspect_ratio=0.75)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_to_center_scale(torch.zeros(4), 0.75)


def test_heatmap_image_round_trip():
    center, scale, _, points = regions()
    image = grid_to_image(points, center, scale, HEATMAP)
    back = apply_affine(invert_affine(grid_to_image_matrix(center, scale, HEATMAP)), image)
    assert (back - points).abs().max() < 1e-9
    assert (
        grid_to_image(points.float(), center.float(), scale.float(), HEATMAP).double() - image
    ).abs().max() < 1e-3


def test_crop_and_heatmap_grids_agree_on_the_image():
    center, scale, _, points = regions()
    crop_points = heatmap_to_crop(points, stride=4)
    torch.testing.assert_close(crop_to_heatmap(crop_points, 4), points)
    torch.testing.assert_close(
        grid_to_image(points, center, scale, HEATMAP),
        grid_to_image(crop_points, center, scale, CROP),
    )
    # The region's centre is the middle of either grid.
    mid = torch.tensor([[[(CROP[1] - 1) / 2, (CROP[0] - 1) / 2]]], dtype=torch.float64)
    torch.testing.assert_close(grid_to_image(mid, center[:1], scale[:1], CROP), center[:1, None])


def test_matrix_matches_closed_form_and_inverts_with_rotation():
    center, scale, rotation, points = regions()
    torch.testing.assert_close(
        apply_affine(grid_to_image_matrix(center, scale, HEATMAP), points),
        grid_to_image(points, center, scale, HEATMAP),
    )
    matrix = grid_to_image_matrix(center, scale, HEATMAP, rotation)
    back = apply_affine(invert_affine(matrix), apply_affine(matrix, points))
    assert (back - points).abs().max() < 1e-9
    # Rotation turns the region about its centre: distances to the centre are preserved.
    mid = torch.tensor([(HEATMAP[1] - 1) / 2, (HEATMAP[0] - 1) / 2], dtype=torch.float64)
    rotated = apply_affine(matrix, points) - center[:, None]
    plain = grid_to_image(points, center, scale, HEATMAP) - center[:, None]
    torch.testing.assert_close(rotated.norm(dim=-1), plain.norm(dim=-1))
    torch.testing.assert_close(apply_affine(matrix, mid.expand(6, 1, 2)), center[:, None])


def blob_image(x: float, y: float, size=(480, 640), sigma: float = 3.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    blob = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return blob.float().expand(3, -1, -1).unsqueeze(0)


def centroid(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    m = img.double()
    return torch.stack(((m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()))


def test_warp_crops_puts_an_image_point_where_the_geometry_says():
    point = torch.tensor([[[300.3, 210.7]]], dtype=torch.float64)
    center = torch.tensor([[290.0, 230.0]], dtype=torch.float64)
    scale = torch.tensor([[120.0, 160.0]], dtype=torch.float64)
    crops = warp_crops(
        blob_image(300.3, 210.7), torch.tensor([0]), center.float(), scale.float(), CROP
    )
    expected = apply_affine(invert_affine(grid_to_image_matrix(center, scale, CROP)), point)[0, 0]
    assert (centroid(crops[0, 0]) - expected).abs().max() < 0.02
    mirrored = warp_crops(
        blob_image(300.3, 210.7), torch.tensor([0]), center.float(), scale.float(), CROP, flip=True
    )
    torch.testing.assert_close(mirrored, crops.flip(-1))
    assert abs(centroid(mirrored[0, 0])[0] - (CROP[1] - 1 - expected[0])) < 0.02


def test_warp_crops_matches_cv2_warp_affine_with_rotation():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 2.0)
    center = torch.tensor([[80.0, 60.0], [60.0, 50.0]])
    scale = torch.tensor([[60.0, 80.0], [45.0, 60.0]])
    rotation = torch.tensor([0.0, 25.0])
    crops = warp_crops(
        torch.from_numpy(image)[None, None], torch.tensor([0, 0]), center, scale, (64, 48), rotation
    )
    to_crop = invert_affine(
        grid_to_image_matrix(center.double(), scale.double(), (64, 48), rotation.double())
    )
    for i in range(2):
        ref = cv2.warpAffine(
            image,
            to_crop[i].numpy(),
            (48, 64),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        # cv2 keeps 5 fractional bits for the bilinear weights; interior pixels agree to that.
        np.testing.assert_allclose(crops[i, 0, 4:-4, 4:-4].numpy(), ref[4:-4, 4:-4], atol=5e-3)


def test_warp_crops_handles_several_images_and_no_people():
    images = torch.stack((blob_image(100.0, 100.0)[0], blob_image(400.0, 300.0)[0]))
    center = torch.tensor([[400.0, 300.0], [100.0, 100.0], [400.0, 300.0]])
    scale = torch.tensor([[60.0, 80.0]]).expand(3, 2)
    crops = warp_crops(images, torch.tensor([1, 0, 0]), center, scale, (64, 48))
    assert crops[0].max() > 0.9 and crops[1].max() > 0.9 and crops[2].max() < 1e-6
    empty = warp_crops(
        images, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2), torch.zeros(0, 2), (64, 48)
    )
    assert empty.shape == (0, 3, 64, 48)


def codec_heatmap_points(crop: torch.Tensor, mapping: str) -> torch.Tensor:
    """Where each codec puts crop pixels (..., 2) on its heatmap (`CROP` -> `HEATMAP`)."""
    (h_in, w_in), (h_hm, w_hm) = CROP, HEATMAP
    if mapping == "msra":  # MMPose MSRAHeatmap: keypoints / (input_size / heatmap_size)
        return crop / torch.tensor([w_in / w_hm, h_in / h_hm], dtype=crop.dtype)
    if mapping == "udp":  # MMPose UDPHeatmap: keypoints / ((input_size - 1) / (heatmap_size - 1))
        scale = ((w_hm - 1) / (w_in - 1), (h_hm - 1) / (h_in - 1))
        return crop * torch.tensor(scale, dtype=crop.dtype)
    return crop_to_heatmap(crop, 4)


@pytest.mark.parametrize("mapping", HEATMAP_MAPPINGS)
def test_each_heatmap_mapping_converts_to_the_crop_point_it_encodes(mapping):
    center, scale, _, points = regions()
    crop = points * 4  # crop pixels, inside and a little outside the crop
    converted = to_pixel_center_heatmap(codec_heatmap_points(crop, mapping), mapping, CROP, HEATMAP)
    assert (heatmap_to_crop(converted, 4) - crop).abs().max() < 1e-9
    assert (
        grid_to_image(converted, center, scale, HEATMAP) - grid_to_image(crop, center, scale, CROP)
    ).abs().max() < 1e-9


def test_msra_heatmaps_read_as_pixel_centre_are_off_by_one_and_a_half_crop_pixels():
    _, _, _, points = regions()
    crop = points * 4
    as_ours = heatmap_to_crop(codec_heatmap_points(crop, "msra"), 4)
    torch.testing.assert_close(as_ours - crop, torch.full_like(crop, 1.5), rtol=0, atol=1e-9)
    # In heatmap pixels that is (1 - 1/4) / 2 = 0.375, the shift the conversion removes.
    hm = codec_heatmap_points(crop, "msra")
    torch.testing.assert_close(
        hm - to_pixel_center_heatmap(hm, "msra", CROP, HEATMAP),
        torch.full_like(hm, 0.375), rtol=0, atol=1e-12,
    )  # fmt: skip
    assert to_pixel_center_heatmap(hm, "pixel-center", CROP, HEATMAP) is hm


def test_heatmap_mapping_compiles_without_graph_breaks():
    hm = codec_heatmap_points(regions()[3].float() * 4, "udp")
    for mapping in HEATMAP_MAPPINGS:

        def convert(points, mapping=mapping):
            return to_pixel_center_heatmap(points, mapping, CROP, HEATMAP)

        compiled = torch.compile(convert, backend="eager", fullgraph=True, dynamic=False)
        torch.testing.assert_close(compiled(hm), convert(hm), rtol=0, atol=0)


def test_bad_heatmap_mappings_are_refused():
    points = torch.zeros(1, 17, 2)
    with pytest.raises(ValueError, match=r"unknown heatmap mapping 'mmpose'; choose from "
                       r"pixel-center, msra, udp"):  # fmt: skip
        to_pixel_center_heatmap(points, "mmpose", CROP, HEATMAP)
    with pytest.raises(ValueError, match=r"udp mapping needs heatmaps of at least 2x2"):
        to_pixel_center_heatmap(points, "udp", (4, 4), (1, 1))


def test_boxes_from_keypoints_hand_made() -> None:
    kpts = torch.tensor(
        [
            # tight box x 10..30, y 20..60 (the 0.1 point is ignored, 0.3 == thr is ignored too)
            [[10.0, 20.0, 0.9], [30.0, 60.0, 0.8], [100.0, 5.0, 0.1], [20.0, 40.0, 0.3]],
            [[1.0, 2.0, 0.0], [3.0, 4.0, 0.2], [5.0, 6.0, 0.1], [7.0, 8.0, 0.3]],  # nobody
            [[50.0, 70.0, 0.9], [0.0, 0.0, 0.0], [9.0, 9.0, 0.2], [1.0, 1.0, 0.0]],  # one point
        ],
        dtype=torch.float64,
    )
    boxes = boxes_from_keypoints(kpts, score_thr=0.3, padding=1.25)
    expected = torch.tensor(
        [[7.5, 15.0, 32.5, 65.0], [0.0, 0.0, 0.0, 0.0], [50.0, 70.0, 50.0, 70.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(boxes, expected, atol=0, rtol=0)
    assert boxes.dtype == torch.float64

    edge = torch.tensor([[[2.0, 3.0, 1.0], [12.0, 13.0, 1.0]]])
    torch.testing.assert_close(
        boxes_from_keypoints(edge, score_thr=0.5, padding=1.5),
        torch.tensor([[-0.5, 0.5, 14.5, 15.5]]),
    )
    torch.testing.assert_close(
        boxes_from_keypoints(edge, score_thr=0.5, padding=1.5, image_size=(14, 12)),
        torch.tensor([[0.0, 0.5, 12.0, 14.0]]),
    )
    assert boxes_from_keypoints(torch.zeros(0, 17, 3)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, K, 3\)"):
        boxes_from_keypoints(torch.zeros(2, 17))
    with pytest.raises(ValueError, match="padding must be > 0"):
        boxes_from_keypoints(kpts, padding=0.0)
