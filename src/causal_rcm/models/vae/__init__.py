"""Video autoencoders for Wan-scale worlds: diffusers' Wan2.1 VAE streamed chunk by chunk, and a tiny
TAEHV-family decoder for real-time preview and play."""
from .tiny import (TinyDecoderConfig, TinyDecodeState, TinyVideoDecoder, load_tiny_decoder, read_state_dict,
                   taew2_1)
from .wan_stream import WanDecodeState, WanStream, channels_last_, wan_strides

__all__ = ["WanStream", "WanDecodeState", "wan_strides", "channels_last_", "TinyVideoDecoder", "TinyDecoderConfig",
           "TinyDecodeState", "taew2_1", "load_tiny_decoder", "read_state_dict"]
