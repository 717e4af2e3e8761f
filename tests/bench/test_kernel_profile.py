"""The GPU profile summary (frametuner/bench/kernel_profile.py) on hand-made kernel lists."""

import pytest

from frametuner.bench.kernel_profile import categorise, one_line, summarise, union_seconds


@pytest.mark.parametrize(
    "name, category",
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
        ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT", "gemm"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128", "attention"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
        ("void fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)", "attention"),
        ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_3", "fused"),
        ("triton_red_fused__to_copy_abs_amax_clamp_4", "fp8_cast"),
        ("Memcpy DtoH (Device -> Pinned)", "copy"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "other"),
    ],
)
def test_categorise(name, category):
    assert categorise(name) == category


def test_union_counts_overlap_once():
    # [0, 10] and [5, 15] overlap in 5 us; [20, 30] apart: 15 + 10 = 25 us.
    assert union_seconds([(20, 30), (0, 10), (5, 15)]) == pytest.approx(25e-6)
    assert union_seconds([]) == 0.0


def test_summarise_sums_categories_and_leaves_side_stream_copies_out_of_busy():
    kernels = [
        ("sm90_xmma_gemm_bf16", 0.0, 400_000.0),  # 0.4 s
        ("pytorch_flash::flash_fwd_kernel", 500_000.0, 300_000.0),  # 0.3 s, after a 0.1 s gap
        ("Memcpy HtoD (Pinned -> Device)", 100_000.0, 600_000.0),  # overlaps both: not busy time
        ("sm90_xmma_gemm_bf16", 800_000.0, 100_000.0),
    ]
    summary = summarise(kernels, wall_s=1.0)
    assert summary["seconds"]["gemm"] == pytest.approx(0.5)
    assert summary["seconds"]["attention"] == pytest.approx(0.3)
    assert summary["seconds"]["copy"] == pytest.approx(0.6)
    assert summary["busy_s"] == pytest.approx(0.8)
    assert summary["idle_s"] == pytest.approx(0.2)
    assert summary["top"][0] == {"name": "Memcpy HtoD (Pinned -> Device)", "calls": 1, "s": 0.6, "category": "copy"}
    assert summary["top"][1]["calls"] == 2
    line = one_line(summary)
    assert "GPU busy 0.80 s" in line and "gemm 0.50" in line and "fused" not in line
