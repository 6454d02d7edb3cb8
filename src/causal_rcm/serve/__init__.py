# Light names only: the server process imports this package and must not load torch (serve/worker.py does).
from .options import PlayOptions
from .protocol import Frame, OutFrame, ProtocolError, check_start, pack_frame, parse_message, unpack_frame

__all__ = ["Frame", "OutFrame", "PlayOptions", "ProtocolError", "check_start", "pack_frame", "parse_message",
           "unpack_frame"]
