"""The exceptions videocap raises at its boundaries (paths, user input, configs).

Every error a user can cause derives from `VideocapError`; the CLI turns any of them into a one-line message on
stderr and exit code 2. Internal invariants use `assert` instead and are bugs when they fire.
"""

from __future__ import annotations


class VideocapError(Exception):
    """Base of every error caused by input videocap was given (as opposed to a bug in videocap)."""


class VideoError(VideocapError):
    """A video could not be used. `path` names the file, `reason` says why in one line."""

    def __init__(self, path: str | None, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)

    def with_path(self, path: str) -> VideoError:
        """The same error, naming `path` (for errors raised where the path was not known)."""
        return type(self)(path, self.reason)


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist."""


class VideoAccessError(VideoError, PermissionError):
    """The file exists but cannot be read (permissions)."""


class NotAVideoError(VideoError):
    """The path is a directory, not a regular file, an empty file, a still image, or a file FFmpeg does not
    recognise as a media container."""


class NoVideoStreamError(VideoError):
    """The container holds no video stream (an audio-only file, say)."""


class TruncatedVideoError(VideoError):
    """The file ends before the data its container promises (a cut-off download or copy)."""


class CorruptVideoError(VideoError):
    """The stream holds data the decoder cannot decode (an error in the middle of the stream)."""


class WindowError(VideoError, ValueError):
    """A [start, end] window that lies outside the video or is empty."""


class LayoutError(VideocapError, ValueError):
    """Frames that cannot be laid out as asked (none, mixed sizes, or a canvas too large to build)."""


class ModelError(VideocapError):
    """A model could not be found, fetched or loaded. The message names the model (id, alias or path)."""


class ModelNotFoundError(ModelError):
    """No such model: an unknown alias, a Hub repository or revision that does not exist (404), a missing path."""


class ModelAccessError(ModelError):
    """The Hub refused access (401/403: a gated or private repository without an accepted licence or token)."""


class HubConnectionError(ModelError):
    """The Hub could not be reached and the model is not in the local cache."""


class NotCachedError(ModelError):
    """Offline (HF_HUB_OFFLINE=1) and the model, or a file of it, is not in the local cache."""


class UnsafeCheckpointError(ModelError):
    """The checkpoint holds only pickled weights (.bin/.pt), which can run code when loaded; --allow-pickle opts in."""


class CheckpointError(ModelError):
    """A checkpoint that does not fit the model: an unreadable config, missing or unexpected tensors, wrong shapes."""


class PromptError(VideocapError, ValueError):
    """A question or conversation that cannot become a prompt (an `<image>` marker in the text, say)."""


class PromptTooLongError(VideocapError, ValueError):
    """The prompt does not fit the model's context or the KV cache (a long chat: `/reset` starts over)."""


class RecordError(VideocapError, ValueError):
    """A captions file or record that cannot be summarized; the message names the file, the record and what is
    missing."""


class DeviceError(VideocapError, ValueError):
    """A device or dtype that cannot be used here."""


class SamplingError(VideocapError, ValueError):
    """Generation settings that cannot be used (a negative temperature, top_p outside (0, 1], ...)."""


class VideoTooShortError(VideoError):
    """A video (or window) shorter than a length the caller requires (keyframes' `min_duration`)."""


class KeyframeSettingsError(VideocapError, ValueError):
    """Keyframe-selection settings that cannot be used (a threshold outside [-1, 1], a non-positive interval)."""


class BatchInputError(VideocapError, ValueError):
    """A batch job's input (directory, glob, list or manifest) or journal that cannot be used; the message names the
    file, the line and what is wrong."""
