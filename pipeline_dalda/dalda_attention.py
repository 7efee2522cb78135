# Copyright 2026 The dalda authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""IP-Adapter attention with one λ per item of the UNet batch, for every DALDA pipeline: diffusers' IP-Adapter
processors hold one scale for the whole batch.

Part of the DALDA community pipelines: it imports third-party packages only.
"""

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import (
    Attention,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
)


IP_ADAPTER_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)
"""diffusers' IP-Adapter attention processors, whose key/value projections the per-item processor reuses."""


class PerItemIPAdapterAttnProcessor(torch.nn.Module):
    r"""
    IP-Adapter decoupled cross-attention, `Z = Attn(Q, K_t, V_t) + Σ_k λ_bk · Attn(Q, K_k, V_k)`, with one λ per
    batch item `b` and IP-Adapter `k`.

    diffusers' IP-Adapter processors hold one scale for the whole batch. This one reuses an IP-Adapter processor's
    key/value projections (shared, not copied) and multiplies each adapter's image branch by a per-item scale, so a
    batch whose items have different λ's is denoised in one pass; item for item it computes what the diffusers
    processor computes at that item's λ's, IP-Adapter masks (`cross_attention_kwargs={"ip_adapter_masks": ...}`)
    included.

    Args:
        ip_adapter_processor: a loaded diffusers IP-Adapter processor whose weights are used.
        item_scales (`torch.Tensor`): λ per item of the UNet batch and IP-Adapter, shape `(batch, num_adapters)`;
            with classifier-free guidance the UNet batch is `[uncond..., cond...]`, so λ's appear twice.
    """

    def __init__(self, ip_adapter_processor: torch.nn.Module, item_scales: torch.Tensor):
        super().__init__()
        self.to_k_ip = ip_adapter_processor.to_k_ip
        self.to_v_ip = ip_adapter_processor.to_v_ip
        self.item_scales = item_scales

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, list[torch.Tensor]],
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_adapter_masks: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, tuple):
            raise ValueError("The per-item IP-Adapter processor expects `(text_states, ip_states)` from the UNet.")
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        residual = hidden_states

        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if batch_size != self.item_scales.shape[0]:
            raise ValueError(f"UNet batch of {batch_size} but {self.item_scales.shape[0]} per-item IP-Adapter scales.")

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        def image_attention(ip_states, to_k_ip, to_v_ip):
            ip_key = to_k_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = to_v_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_attention = F.scaled_dot_product_attention(query, ip_key, ip_value)
            return ip_attention.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        scales = self.item_scales.to(device=hidden_states.device, dtype=hidden_states.dtype)
        masks = ip_adapter_masks if ip_adapter_masks is not None else [None] * len(ip_hidden_states)
        for adapter, (ip_states, to_k_ip, to_v_ip, mask) in enumerate(
            zip(ip_hidden_states, self.to_k_ip, self.to_v_ip, masks)
        ):
            scale = scales[:, adapter].view(-1, 1, 1)
            if mask is None:
                hidden_states = hidden_states + scale * image_attention(ip_states, to_k_ip, to_v_ip)
                continue
            # As diffusers' processor: each of the adapter's images attends alone and is masked to its region.
            for image in range(mask.shape[1]):
                ip_attention = image_attention(ip_states[:, image], to_k_ip, to_v_ip)
                region = IPAdapterMaskProcessor.downsample(
                    mask[:, image], batch_size, ip_attention.shape[1], ip_attention.shape[2]
                ).to(dtype=query.dtype, device=query.device)
                hidden_states = hidden_states + scale * (ip_attention * region)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def per_item_ip_adapter_scales(unet: torch.nn.Module, item_scales: torch.Tensor) -> Iterator[None]:
    """Within the block, every IP-Adapter attention of `unet` applies `item_scales` (one λ per UNet batch item and
    IP-Adapter, shape `(batch, num_adapters)`).

    The UNet's own processors are put back on exit, so later calls behave exactly as before.
    """
    original_processors = unet.attn_processors
    if not any(isinstance(p, IP_ADAPTER_PROCESSORS) for p in original_processors.values()):
        raise ValueError("No IP-Adapter is loaded; call `pipe.load_ip_adapter(...)` first.")
    unet.set_attn_processor(
        {
            name: PerItemIPAdapterAttnProcessor(processor, item_scales)
            if isinstance(processor, IP_ADAPTER_PROCESSORS)
            else processor
            for name, processor in original_processors.items()
        }
    )
    try:
        yield
    finally:
        unet.set_attn_processor(original_processors)
