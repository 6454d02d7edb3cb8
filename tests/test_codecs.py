"""Streaming video codecs: the Wan2.1 VAE streamed over diffusers' own modules, the TAEHV-family tiny decoder,
one interface. The reference for the Wan VAE is diffusers' own whole-clip ``vae.decode`` / ``vae.encode`` on
a tiny random-initialised VAE (the real architecture at 8 channels: temporal stride 4, spatial stride 8)."""
import pytest
import torch

from causal_rcm.models.vae import TinyDecoderConfig, TinyVideoDecoder, channels_last_, load_tiny_decoder, taew2_1
from causal_rcm.models.vae.tiny import MemBlock, TimeGrow
from causal_rcm.stream.codec import (PixelCodec, TinyDecoderCodec, VideoCodec, WanVAECodec, decode_all,
                                     make_codec)
from .conftest import requires_cuda

diffusers = pytest.importorskip("diffusers")

B, H, W = 2, 5, 7  # latents 5×7: not a multiple of anything → pixels 40×56
TINY_TAE = TinyDecoderConfig(widths=(16, 8, 8, 8))


def tiny_wan_vae(dtype=torch.float32):
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                      temperal_downsample=[False, True, True]).to(dtype).eval()


def tiny_tae(config=TINY_TAE):
    torch.manual_seed(0)
    dec = TinyVideoDecoder(config).eval()
    with torch.no_grad():
        dec.decoder[-1].bias.fill_(0.5)  # centre the random output in [0, 1], so no frame is clamped flat
    return dec


def raw(vae, z):
    """Diffusers' pipeline convention, written from the config: μ = z / (1 / std) + mean."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return z / inv_std + mean


def stream(codec, z, split, batch=None):
    """Decode z chunk by chunk; return the frames and each call's frame count."""
    state, outs, i = codec.init_state(batch or z.shape[0]), [], 0
    for n in split:
        frames, state = codec.decode(z[:, :, i : i + n], state)
        outs.append(frames)
        i += n
    assert i == z.shape[2]
    return torch.cat(outs, 2), [o.shape[2] for o in outs]


def expected_counts(split, stride=4):
    return [1 + stride * (split[0] - 1)] + [stride * n for n in split[1:]]


@pytest.fixture(scope="module")
def wan():
    vae = tiny_wan_vae()
    z = torch.randn(B, 16, 6, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.decode(raw(vae, z)).sample
    return vae, WanVAECodec(vae), z, ref


# ---------------------------------------------------------------- Wan VAE


@pytest.mark.parametrize("split", [[1] * 6, [3, 3], [1, 3, 2], [5, 1]])
def test_wan_stream_equals_diffusers_decode(wan, split):
    _, codec, z, ref = wan
    out, counts = stream(codec, z, split)
    assert ref.shape == (B, 3, 1 + 4 * 5, 8 * H, 8 * W)
    assert counts == expected_counts(split)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)


def test_wan_stream_uneven_81_frames():
    vae = tiny_wan_vae()
    codec = WanVAECodec(vae)
    z = torch.randn(1, 16, 21, 3, 4, generator=torch.Generator().manual_seed(2))  # small: 81 frames is the point
    with torch.no_grad():
        ref = vae.decode(raw(vae, z)).sample
    out, counts = stream(codec, z, [1, 3, 3, 5, 9])
    assert counts == [1, 12, 12, 20, 36] and out.shape[2] == ref.shape[2] == 81
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("T, split", [(1, [1]), (2, [2]), (2, [1, 1])])
def test_wan_short_clips(wan, T, split):
    vae, codec, z, _ = wan
    with torch.no_grad():
        ref = vae.decode(raw(vae, z[:, :, :T])).sample
    out, counts = stream(codec, z[:, :, :T], split)
    assert out.shape[2] == ref.shape[2] == 1 + 4 * (T - 1) and counts == expected_counts(split)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)


def test_wan_state_is_carried_and_is_a_value(wan):
    """The cache decides the next chunk (a fresh state gives other frames), and decoding never writes into an
    old state: the same state decodes the same chunk twice alike."""
    _, codec, z, ref = wan
    _, s1 = codec.decode(z[:, :, :2], codec.init_state(B))
    kept = [c.clone() if torch.is_tensor(c) else c for c in s1.cache]
    a, s2 = codec.decode(z[:, :, 2:4], s1)
    b, _ = codec.decode(z[:, :, 2:4], s1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref[:, :, 5:13], rtol=1e-5, atol=2e-6)
    for old, now in zip(kept, s1.cache):
        assert torch.equal(old, now) if torch.is_tensor(old) else old == now
    assert s2.frames == 4 and s2.size == (H, W)
    fresh, _ = codec.decode(z[:, :, 2:4], codec.init_state(B))
    assert (fresh - ref[:, :, 8:13]).abs().max() > 1e-3  # fresh: latent 2 taken as a first frame


def test_wan_encode_is_normalised_posterior_mean(wan):
    vae, codec, _, _ = wan
    video = torch.rand(B, 3, 9, 8 * H, 8 * W, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        mu = vae.encode(video).latent_dist.mode()
        back = vae.decode(mu).sample
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = codec.encode(video)
    assert z.shape == (B, 16, 3, H, W) == (B, *codec.latent_shape(9, 8 * H, 8 * W))
    torch.testing.assert_close(z, (mu - mean) * inv_std, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decode_all(codec, z), back, rtol=1e-5, atol=1e-5)


def test_wan_channels_last_stream_equals_diffusers_decode(wan):
    """The channels-last weight layout (the fast one on GPUs) changes no value."""
    vae, _, z, ref = wan
    fast = channels_last_(tiny_wan_vae())
    assert fast.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    out, _ = stream(WanVAECodec(fast), z, [2, 1, 3])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)


def test_wan_bf16_stream_close_to_diffusers():
    vae = tiny_wan_vae(torch.bfloat16)
    codec = WanVAECodec(vae)
    z = torch.randn(1, 16, 4, H, W, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = vae.decode(raw(vae, z).to(torch.bfloat16)).sample.float()
    out, _ = stream(codec, z, [1, 3])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=3e-2)


def test_wan_bad_inputs(wan):
    _, codec, z, _ = wan
    state = codec.init_state(B)
    with pytest.raises(ValueError, match="16"):
        codec.decode(z[:, :4], state)
    with pytest.raises(ValueError, match="batch"):
        codec.decode(z[:1], state)
    with pytest.raises(ValueError, match="t ≥ 1"):
        codec.decode(z[:, :, :0], state)
    _, state = codec.decode(z[:, :, :1], state)
    with pytest.raises(ValueError, match="started at"):
        codec.decode(z[:, :, 1:2, :4], state)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        codec.encode(torch.zeros(1, 3, 8, 40, 56))
    with pytest.raises(ValueError, match="state"):
        codec.decode(z[:, :, :1], TinyVideoDecoder(TINY_TAE).init_state(B))
    with pytest.raises(ValueError, match="AutoencoderKLWan"):
        WanVAECodec(TinyVideoDecoder(TINY_TAE))


def test_make_codec_wan_from_folder(wan, tmp_path):
    vae, codec, z, ref = wan
    vae.save_pretrained(tmp_path / "vae")
    loaded = make_codec({"kind": "wan_vae", "path": str(tmp_path / "vae"), "dtype": "float32", "device": "cpu",
                         "channels_last": True})
    assert loaded.stream.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert isinstance(loaded, WanVAECodec)
    torch.testing.assert_close(stream(loaded, z, [1, 5])[0], ref, rtol=1e-5, atol=2e-6)
    with pytest.raises(FileNotFoundError, match="AutoencoderKLWan folder"):
        make_codec({"kind": "wan_vae", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="unknown"):
        make_codec({"kind": "wan_vae", "path": str(tmp_path / "vae"), "scale": 2})


# ---------------------------------------------------------------- tiny decoder


def frame_by_frame(dec, z):
    """Independent reference: one frame at a time through the layers; each MemBlock keeps its previous input
    (zeros before the clip), a TimeGrow splits a frame's channels into consecutive frames; drop 3, map to [−1, 1]."""
    seq = list(z.transpose(1, 2).unbind(1))
    for layer in dec.decoder:
        if isinstance(layer, MemBlock):
            prev, out = torch.zeros_like(seq[0]), []
            for x in seq:
                out.append(torch.relu(layer.conv(torch.cat([x, prev], 1)) + x))
                prev = x
            seq = out
        elif isinstance(layer, TimeGrow):
            seq = [f for x in seq for f in layer.conv(x).chunk(layer.stride, 1)]
        else:
            seq = [layer(x) for x in seq]
    return torch.stack(seq, 2)[:, :, 3:].clamp(0, 1) * 2 - 1


@pytest.fixture(scope="module")
def tae():
    dec = tiny_tae()
    z = torch.randn(B, 16, 6, H, W, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = frame_by_frame(dec, z)
    return dec, z, ref


def test_tiny_whole_decode_equals_frame_by_frame(tae):
    dec, z, ref = tae
    out = dec.decode_video(z)
    assert out.shape == (B, 3, 21, 8 * H, 8 * W)
    assert 0.02 < out.std() and (out.abs() < 0.999).float().mean() > 0.9  # a live signal, not clamped
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split, channels_last", [([1] * 6, False), ([3, 3], True), ([1, 3, 2], False),
                                                   ([1, 3, 2], True), ([2, 4], False)])
def test_tiny_stream_equals_whole(tae, split, channels_last):
    dec, z, ref = tae
    codec = TinyDecoderCodec(dec.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format))
    out, counts = stream(codec, z, split)
    assert counts == expected_counts(split)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_tiny_state_is_carried(tae):
    dec, z, ref = tae
    _, state = dec.decode(z[:, :, :3], dec.init_state(B))
    carried, _ = dec.decode(z[:, :, 3:], state)
    fresh, _ = dec.decode(z[:, :, 3:], dec.init_state(B))
    torch.testing.assert_close(carried, ref[:, :, 9:], rtol=1e-5, atol=1e-5)
    assert (fresh[:, :, -9:] - ref[:, :, -9:]).abs().max() > 1e-3


def test_tiny_and_wan_frames_align(wan, tae):
    """Same latents, same calls → same frame counts from both decoders (so a player can swap them)."""
    split = [1, 3, 2]
    assert stream(wan[1], wan[2], split)[1] == stream(TinyDecoderCodec(tae[0]), tae[1], split)[1]


PUBLISHED = {  # taew2_1.pth decoder entries as the published TAEHV source builds them (madebyollin/taehv)
    "decoder.1.weight": (256, 16, 3, 3), "decoder.1.bias": (256,),
    "decoder.3.conv.0.weight": (256, 512, 3, 3), "decoder.3.conv.4.bias": (256,),
    "decoder.7.conv.weight": (256, 256, 1, 1), "decoder.8.weight": (128, 256, 3, 3),
    "decoder.11.conv.2.weight": (128, 128, 3, 3), "decoder.13.conv.weight": (256, 128, 1, 1),
    "decoder.14.weight": (64, 128, 3, 3), "decoder.17.conv.0.weight": (64, 128, 3, 3),
    "decoder.19.conv.weight": (128, 64, 1, 1), "decoder.20.weight": (64, 64, 3, 3),
    "decoder.22.weight": (3, 64, 3, 3), "decoder.22.bias": (3,),
}


def test_taew2_1_layout():
    sd = TinyVideoDecoder(taew2_1()).state_dict()
    for k, shape in PUBLISHED.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k in sd for k in ("decoder.8.bias", "decoder.14.bias", "decoder.20.bias", "decoder.7.conv.bias"))
    assert len(sd) == 64 and sum(k.endswith(".bias") for k in sd) == 29  # 9 MemBlocks × 3 convs + 2 convs


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_published_layout(tmp_path, suffix):
    from safetensors.torch import save_file

    src = tiny_tae(taew2_1())
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["encoder.0.weight"] = torch.zeros(64, 3, 3, 3)  # the file's encoder: present in taew2_1, not used here
    path = tmp_path / f"taew2_1{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))
    codec = make_codec({"kind": "taehv", "path": str(path), "dtype": "float32", "device": "cpu"})
    assert isinstance(codec, TinyDecoderCodec)
    for k, v in codec.decoder.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    z = torch.randn(1, 16, 2, H, W)
    torch.testing.assert_close(decode_all(codec, z), src.decode_video(z), rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="encoder"):
        codec.encode(torch.zeros(1, 3, 1, 40, 56))


def test_load_rejects_other_layouts(tmp_path):
    sd = TinyVideoDecoder(TINY_TAE).state_dict()
    torch.save(sd, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="wrong shapes"):
        load_tiny_decoder(tmp_path / "small.pth")
    del sd["decoder.22.bias"]
    with pytest.raises(ValueError, match="decoder.22.bias"):
        TinyVideoDecoder(TINY_TAE).load_decoder_weights(sd)
    with pytest.raises(FileNotFoundError):
        load_tiny_decoder(tmp_path / "missing.pth")


def test_tiny_codec_encodes_through_the_wan_vae(wan, tae):
    _, wan_codec, _, _ = wan
    codec = TinyDecoderCodec(tae[0], encoder=wan_codec)
    video = torch.rand(1, 3, 5, 8 * H, 8 * W) * 2 - 1
    torch.testing.assert_close(codec.encode(video), wan_codec.encode(video), rtol=0, atol=0)
    assert codec.latent_shape(81, 480, 832) == wan_codec.latent_shape(81, 480, 832) == (16, 21, 60, 104)
    with pytest.raises(ValueError, match="batch"):
        codec.decode(tae[1][:1], codec.init_state(B))


def test_all_codecs_take_the_same_calls(wan, tae):
    for codec in (PixelCodec(), wan[1], TinyDecoderCodec(tae[0])):
        assert isinstance(codec, VideoCodec)
        C = codec.channels
        frames = decode_all(codec, torch.zeros(1, C, 2, H, W))
        assert frames.shape[:2] == (1, 3) and frames.shape[2] == 1 + codec.temporal_stride
        assert frames.shape[3:] == (H * codec.spatial_stride, W * codec.spatial_stride)


@requires_cuda
@pytest.mark.gpu
def test_decoders_do_not_sync_the_host():
    """A side-stream decoder must never wait for the GPU: sync debug mode turns any sync into an error."""
    dev = torch.device("cuda")
    z = torch.randn(1, 16, 4, H, W, device=dev)
    for codec in (WanVAECodec(tiny_wan_vae().to(dev)), TinyDecoderCodec(tiny_tae().to(dev))):
        state = codec.init_state(1)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _, state = codec.decode(z[:, :, :1], state)
            _, state = codec.decode(z[:, :, 1:], state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
