"""Audio as ComfyUI writes it, for the tests that send audio through a worker or decode it."""

import io

import av
import torch


def flac_like_comfyui(waveform: torch.Tensor, rate: int) -> bytes:
    """What comfy_extras.nodes_audio.save_audio does for one clip: float samples into a FLAC stream."""
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="flac")
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    stream = container.add_stream("flac", rate=rate, layout=layout)
    frame = av.AudioFrame.from_ndarray(waveform.movedim(0, 1).reshape(1, -1).float().numpy(), format="flt",
                                       layout=layout)
    frame.sample_rate = rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return buffer.getvalue()
