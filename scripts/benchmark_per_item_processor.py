"""Benchmark: the per-item IP-Adapter processor against diffusers' own at one λ, on a UNet forward, side by side.

With every item at the same λ both compute the same thing, so the ratio is the price of carrying one λ per item.
The UNet has Stable Diffusion 1.5's architecture (random weights, built from its config, no download) with
diffusers' `IPAdapterAttnProcessor2_0` on its cross-attentions; the arms alternate A B B A ... and the script prints
the median ratio (per-item / diffusers) with its spread (min–max over rounds):

    python scripts/benchmark_per_item_processor.py --size 256 --batch-size 2 --rounds 8
"""

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from pipeline_dalda.dalda_attention import per_item_ip_adapter_scales
from pipeline_dalda.testing import SD15


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="generated image side, px (latents are 1/8)")
    parser.add_argument("--batch-size", type=int, default=2, help="UNet batch (items × 2 under guidance)")
    parser.add_argument("--rounds", type=int, default=8, help="timed forwards per arm, interleaved")
    parser.add_argument("--scale", type=float, default=0.6, help="the one λ both arms apply")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    return parser.parse_args()


def ip_adapter_unet(scale: float, tokens: int = 4) -> UNet2DConditionModel:
    """SD 1.5's UNet with an IP-Adapter processor (random key/value projections) on every cross-attention."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **SD15.unet)
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            hidden_size = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            processor = IPAdapterAttnProcessor2_0(
                hidden_size, unet.config.cross_attention_dim, num_tokens=(tokens,), scale=scale
            )
        processors[name] = processor
    unet.set_attn_processor(processors)
    return unet.eval()


def main():
    args = parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = ip_adapter_unet(args.scale).to(device, dtype)
    batch, width = args.batch_size, unet.config.cross_attention_dim
    latents = torch.randn(batch, 4, args.size // 8, args.size // 8, device=device, dtype=dtype)
    states = (torch.randn(batch, 77, width, device=device, dtype=dtype),
              [torch.randn(batch, 1, 4, width, device=device, dtype=dtype)])
    item_scales = torch.full((batch, 1), args.scale)

    def forward():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        unet(latents, 500, encoder_hidden_states=states).sample
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def diffusers_arm():
        return forward()

    def per_item_arm():
        with per_item_ip_adapter_scales(unet, item_scales):
            return forward()

    with torch.no_grad():
        expected = unet(latents, 500, encoder_hidden_states=states).sample
        with per_item_ip_adapter_scales(unet, item_scales):
            difference = (unet(latents, 500, encoder_hidden_states=states).sample - expected).abs().max().item()
        diffusers_arm(), per_item_arm()  # warm-up
        ratios, times = [], {"diffusers": [], "per_item": []}
        for round_ in range(args.rounds):
            arms = [("diffusers", diffusers_arm), ("per_item", per_item_arm)]
            for name, arm in arms if round_ % 2 == 0 else arms[::-1]:
                times[name].append(arm())
            ratios.append(times["per_item"][-1] / times["diffusers"][-1])
    print(f"UNet SD 1.5, {args.size} px, batch {batch}, {args.dtype} on {device.type}, {args.rounds} rounds")
    print(f"largest output difference: {difference:.2e}")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s per forward")
    print(f"per-item / diffusers: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
