"""Every public exception and warning of diffcache, under one base class each.

The command line catches :class:`DiffcacheError` once and prints its message as one line (exit code 2); a program
can do the same. Each error also derives from the built-in exception it has always been (``ValueError``,
``TypeError``, ``RuntimeError``, ``FileExistsError``), so ``except ValueError`` keeps working.

Every message names what was wrong and what is accepted.
"""

from __future__ import annotations


class DiffcacheError(Exception):
    """Base of every error diffcache raises on purpose (bad input, an unsupported model, a refused call)."""


class DiffcacheWarning(UserWarning):
    """Base of every warning diffcache emits."""


# -- methods and their configs ---------------------------------------------------------------------------------
class ConfigError(DiffcacheError, ValueError):
    """A method config field is out of range or of the wrong kind; the message names the field and its range."""


class UnknownOptionError(ConfigError, TypeError):
    """A config was given an option it does not have; the message lists the options it has."""


class CompositionError(ConfigError):
    """Methods given together (``enable(pipe, "teacache+cfg-cache")``) that cannot be combined: two act on the same
    level, or their rules conflict; the message says which, why, and what combines."""


class UnknownMethodError(DiffcacheError, ValueError):
    """No method or preset of that name; the message lists the valid ones."""


class MethodAlreadyEnabledError(DiffcacheError, RuntimeError):
    """A diffcache method is already enabled on this model."""


class CallRefusedError(DiffcacheError, ValueError):
    """This call cannot run with the method's settings (e.g. its number of steps leaves no valid schedule).
    Raised when the call begins, before any forward; the message says what would work."""


class ScheduleError(CallRefusedError):
    """DeepCache: no non-uniform schedule exists for this number of steps and interval."""


class HSABudgetError(CallRefusedError):
    """HSA: the requested runtime cannot be met with budgets that divide the number of steps."""


# -- models and steps ------------------------------------------------------------------------------------------
class UnsupportedModelError(DiffcacheError, TypeError):
    """The model is not one diffcache has an adapter for, or lacks a capability the method needs."""


class CompileError(DiffcacheError, RuntimeError):
    """A torch.compile setup diffcache refuses (the model compiled as a whole, a hook inside a compiled block)."""


class StepTrackingError(DiffcacheError, RuntimeError):
    """diffcache could not tell which denoising step a denoiser call belongs to."""


class ModelLoadError(DiffcacheError, RuntimeError):
    """A pipeline could not be loaded: unknown name, missing or corrupted folder, offline hub id."""


class PromptError(DiffcacheError, ValueError):
    """A prompt outside the embedded models' grammar; the message lists the accepted words."""


class OptionError(DiffcacheError, ValueError):
    """An option outside what is accepted (a seed beyond 64 bits, NaN guidance, a size beyond the model's positional
    range, a device this machine lacks), refused before any work; the message names the option, the value and the
    accepted range."""


# -- files and runs --------------------------------------------------------------------------------------------
class OutputPathError(DiffcacheError, OSError):
    """An output cannot be written where it was asked for (a folder of that name, a parent that is a file, a folder
    without write permission), refused before the work that produces it; the message names the path and why."""


class OutputExistsError(DiffcacheError, FileExistsError):
    """The output exists; pass ``force=True`` (``--force``) to replace it."""


class RunNotFoundError(DiffcacheError, ValueError):
    """A distillation run folder has no finished round to read."""


class FolderInUseError(DiffcacheError, RuntimeError):
    """Another run is writing this results folder (``diffcache bench``, ``tune``, ``distill``, ``train``): one writer
    per folder; the message names the running process (its pid, host, start time and command)."""


class BenchConfigError(DiffcacheError, ValueError):
    """A benchmark folder holds results of a different configuration, or the benchmark's options are invalid."""


class PeerUnavailable(DiffcacheError, RuntimeError):
    """A peer implementation cannot run here (its package is missing, or it does not support this model)."""


class MetricInputError(DiffcacheError, ValueError):
    """A quality metric cannot score what it was given (values outside [0, 1], an empty prompt, too few videos for a
    distribution, feature sets of different widths, a file or dimension it does not read); the message says what is
    accepted."""


class CalibrationError(DiffcacheError, ValueError):
    """A calibration cannot fit its constants from these runs (too few prompts or steps, a method that cannot be
    calibrated); the message says what to change."""


class TuneError(DiffcacheError, ValueError):
    """``diffcache tune`` cannot run as asked (a bad target, a method with nothing to search, a folder of another
    configuration) or found no setting that meets its target; the message says what to change."""


class WeightsError(DiffcacheError, ValueError):
    """A weight file diffcache was pointed to (or found installed) cannot be used: it is not a plain tensor file,
    its keys or shapes are another network's, or its hash does not match its name; the message names the file and
    what is accepted."""


class WeightsNotFoundError(DiffcacheError, FileNotFoundError):
    """The weights a metric needs are not on this machine (nothing is downloaded); the message says which package
    to install or which file or environment variable provides them."""


class VideoShapeError(DiffcacheError, ValueError):
    """Videos given to a quality metric are not ``(frames, H, W, 3)`` arrays of one shape, or are too small for
    the metric's network; the message gives the shapes and what is accepted."""


# -- warnings --------------------------------------------------------------------------------------------------
class MethodSilentWarning(DiffcacheWarning):
    """A method's hooks did not run — it is doing nothing."""


class NothingSkippedWarning(DiffcacheWarning):
    """A whole pipeline call went by without the method reusing anything: it cost time and saved none."""


class GuidanceDistilledWarning(DiffcacheWarning):
    """A guidance scale was given to a distilled student, which has guidance built in and ignores it."""


class CalibrationOverlapWarning(DiffcacheWarning):
    """A benchmark runs a tuned preset on the very items (prompt and seed) it was tuned on: its quality there is
    not a fair measure."""


class CorruptRecordWarning(DiffcacheWarning):
    """A results file (``results.jsonl``, ``evaluations.jsonl``) held a line that is not a readable record (a torn
    write, a disk error, an edit): it was moved to ``FILE.corrupt`` by line number and its item is computed again."""


class StaleLockWarning(DiffcacheWarning):
    """A results folder's lock was left by a run that is no longer running (killed); this run took it over."""


__all__ = [name for name, value in dict(globals()).items()
           if isinstance(value, type) and issubclass(value, (DiffcacheError, DiffcacheWarning))]


class ForeignCacheError(MethodAlreadyEnabledError):
    """Another cache (diffusers' ``enable_cache``, cache-dit) is on the denoiser; the message names it and how to
    remove it."""
