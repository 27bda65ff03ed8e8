"""Exceptions raised by the upscaler (video I/O, engine, encoding)."""

from __future__ import annotations


class UpscalerError(Exception):
    """Base class of every error the upscaler raises on purpose."""


class InputVideoError(UpscalerError):
    """The input is not a usable video: missing, corrupt, empty, zero frames, not a video, unsupported."""


class UpscaleCancelled(UpscalerError):
    """The caller asked to stop (``should_cancel`` returned True); partial output was removed."""


class OutputTooLargeError(UpscalerError):
    """The encoded output cannot be brought under the requested size limit."""


class EncodeError(UpscalerError):
    """The encoder or the muxer failed while writing the output."""
