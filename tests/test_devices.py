"""What makes runs portable between devices, checked on the CPU: noise and training randomness from CPU
generators, generator states that resume anywhere, and RNG states restored on hosts with fewer GPUs. The tests marked `gpu` run where CUDA exists
(`pytest -m gpu`) and skip elsewhere."""
import pytest
import torch

from audiogen import checkpoint as audio_checkpoint
from audiogen.phase_refiner import PhaseRefiner
from audiogen.transform import istft
from imagegen.common import StopRequest
from imagegen.diffusion import GaussianDiffusion, SamplerSettings, cpu_normal, restore_generator
from imagegen.sampling import NoiseStreams, Sampler, seeded_generator
from imagegen.training import TrainState
from imagegen.unet import DiffusionModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_noise_comes_from_a_cpu_generator_whatever_the_device():
    generator = seeded_generator(7)
    assert generator.device == torch.device("cpu")
    expected = torch.randn((3, 1, 28, 28), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(NoiseStreams([seeded_generator(7)], 3, "cpu")((3, 1, 28, 28)), expected, rtol=0, atol=0)
    torch.testing.assert_close(cpu_normal((3, 1, 28, 28), seeded_generator(7), torch.device("cpu")), expected,
                               rtol=0, atol=0)


def tiny_sampler():
    torch.manual_seed(0)
    model = DiffusionModel(base_channels=8, num_classes=10).eval()
    return Sampler(model, GaussianDiffusion(num_timesteps=20, beta_start=1e-3, beta_end=0.2))


def test_the_same_seed_draws_the_same_digits_whatever_the_batch():
    sampler = tiny_sampler()
    settings = SamplerSettings("ddim", 4, 0.0, 1.0, 11)
    alone = sampler.sample(3, settings, label=4, batch_size=3)
    in_ones = sampler.sample(3, settings, label=4, batch_size=1)
    torch.testing.assert_close(alone, in_ones, rtol=1e-4, atol=1e-4)


def test_a_training_generator_lives_on_the_cpu_and_resumes_from_any_state():
    state = TrainState(DiffusionModel(base_channels=8), torch.device("cpu"), seed=3)
    assert state.generator.device == torch.device("cpu")
    saved = state.generator.get_state()
    first = torch.rand(4, generator=state.generator)
    other = TrainState(DiffusionModel(base_channels=8), torch.device("cpu"), seed=99)
    restore_generator(other.generator, saved, seed=99, step=0)
    torch.testing.assert_close(torch.rand(4, generator=other.generator), first, rtol=0, atol=0)


def test_a_cuda_generator_state_of_an_older_checkpoint_reseeds_deterministically(capsys):
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # what torch.Generator("cuda").get_state() holds
    a, b, c = torch.Generator(), torch.Generator(), torch.Generator()
    restore_generator(a, cuda_state, seed=1, step=250)
    restore_generator(b, cuda_state, seed=1, step=250)
    restore_generator(c, cuda_state, seed=2, step=250)
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    assert not torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=c))  # another run, other draws
    assert "was a CUDA one" in capsys.readouterr().out


def test_rng_states_of_more_gpus_than_this_host_has_restore(monkeypatch):
    """A checkpoint from a 2-GPU host restores on a host with 1 GPU (set_rng_state_all would raise)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((index, s)))
    cpu_state = torch.get_rng_state()
    audio_checkpoint.set_rng_state({"torch": cpu_state, "cuda": [torch.ones(16, dtype=torch.uint8),
                                                                  torch.zeros(16, dtype=torch.uint8)]})
    assert [index for index, _ in restored] == [0] and torch.equal(restored[0][1], torch.ones(16, dtype=torch.uint8))


# --- on a GPU ------------------------------------------------------------------------------

@cuda
@pytest.mark.gpu
def test_gpu_draws_the_digits_the_cpu_draws():
    cpu = tiny_sampler()
    model = DiffusionModel(**cpu.model.config).eval()
    model.load_state_dict(cpu.model.state_dict())
    gpu = Sampler(model.to("cuda"), GaussianDiffusion(num_timesteps=20, beta_start=1e-3, beta_end=0.2, device="cuda"))
    settings = SamplerSettings("ddim", 4, 0.0, 1.0, 11)
    torch.testing.assert_close(gpu.sample(2, settings, label=3).cpu(), cpu.sample(2, settings, label=3),
                               rtol=1e-3, atol=1e-3)


@cuda
@pytest.mark.gpu
def test_a_gpu_training_state_resumes_on_the_cpu():
    gpu = TrainState(DiffusionModel(base_channels=8), torch.device("cuda"), seed=3)
    gpu.train_step(torch.randn(4, 1, 28, 28, device="cuda"))
    cpu = TrainState(DiffusionModel(base_channels=8), torch.device("cpu"), seed=0)
    cpu.load_state_dict({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in gpu.state_dict().items()})
    assert torch.equal(cpu.generator.get_state(), gpu.generator.get_state())


class CountingWorld:
    """A stand-in for common.World with several processes: counts the agreements (all-reduces) asked of it."""
    active = True

    def __init__(self, device):
        self.device, self.agreements = torch.device(device), []

    def any(self, flag):
        self.agreements.append(bool(flag))
        return bool(flag)


@pytest.mark.parametrize("device, every", [("cpu", 1), ("cuda", 25)])
def test_processes_agree_on_a_stop_every_step_on_cpus_and_every_25_on_gpus(device, every):
    """The stop flag's all-reduce (a host synchronisation) runs after every `every`-th step and at every epoch
    boundary, never in between; a Ctrl-C is then honoured at the next agreement by every process alike."""
    world = CountingWorld(device)
    stop = StopRequest(world)
    assert stop.every == every
    for _ in range(60):
        stop.poll()
    assert len(world.agreements) == 60 // every
    stop.poll(boundary=True)
    assert len(world.agreements) == 60 // every + 1
    stop._asked = True  # what the first Ctrl-C's handler sets
    polls = 0
    while not stop.poll():
        polls += 1
    assert polls == (every - 60 % every) - 1 and stop.requested
    assert StopRequest(None).every == 1 and not StopRequest(None).poll()


def test_training_crops_are_gathered_on_the_device_the_split_is_kept_on():
    """MelClips.keep_on moves the split's log-mels once; crops are then indexed there (here the meta device, which
    any machine has), and on the CPU they are the same numbers as before."""
    from types import SimpleNamespace
    from audiogen.clips import MelClips
    log_mel = torch.randn(4, 40).half()
    clips = MelClips([SimpleNamespace(log_mel=log_mel, windows=[0, 8])], SimpleNamespace(frames=8, n_mels=4))
    starts = torch.tensor([0, 5, 32])
    expected = torch.stack([log_mel[:, s:s + 8].float() for s in starts.tolist()])
    assert torch.equal(clips.crops(starts), expected)
    assert torch.equal(clips.keep_on("cpu").crops(starts), expected)
    on_meta = clips.keep_on("meta").crops(starts)
    assert on_meta.device.type == "meta" and on_meta.shape == (3, 4, 8) and on_meta.dtype == torch.float32


@cuda
@pytest.mark.gpu
def test_the_inverse_stft_and_the_phase_refiner_give_on_a_gpu_what_they_give_on_the_cpu():
    """The written-out inverse STFT (every inverse's last step) and the channels-last refiner on cuda."""
    generator = torch.Generator().manual_seed(0)
    spectrum = torch.randn(2, 513, 256, dtype=torch.complex64, generator=generator)
    window = torch.hann_window(1024)
    on_cpu = istft(spectrum, 1024, 313, window, 80_000)
    on_gpu = istft(spectrum.cuda(), 1024, 313, window.cuda(), 80_000).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5 * float(on_cpu.abs().max()))
    refiner = PhaseRefiner()
    torch.nn.init.normal_(refiner.correction.weight, std=0.1)  # else an untrained refiner returns the phase as given
    magnitude, phase = torch.rand(1, 513, 256, generator=generator), torch.rand(1, 513, 256, generator=generator)
    with torch.no_grad():
        corrected = refiner(magnitude, phase)
        on_gpu = refiner.to("cuda")(magnitude.cuda(), phase.cuda()).cpu()
    assert not torch.equal(corrected, phase)
    torch.testing.assert_close(on_gpu, corrected, rtol=1e-3, atol=1e-3)
