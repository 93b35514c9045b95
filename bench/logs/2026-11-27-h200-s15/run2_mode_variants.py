"""Which formulation of the mode's one-hot compiles in a bf16 graph on this torch; timings."""
import time, torch, numpy as np
from robobrain.config import get_preset
from robobrain.world_model import WorldModel, Bf16Imagine, State
from robobrain.world_model.rssm import RSSM
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.policies import WorldModelMPCPolicy

def va(self, state, action):
    deter = self.deter_step(state, action)
    logits = self.prior(deter).unflatten(-1, (self.cfg.stoch, self.cfg.classes))
    return State(deter, torch.zeros_like(logits).scatter_(-1, logits.max(-1, keepdim=True).indices, 1.0), state.goal)
def vb(self, state, action):
    deter = self.deter_step(state, action)
    logits = self.prior(deter).unflatten(-1, (self.cfg.stoch, self.cfg.classes))
    i = logits.max(-1, keepdim=True).indices
    return State(deter, torch.zeros_like(logits).scatter_(-1, i, torch.ones_like(i, dtype=logits.dtype)), state.goal)
def vc(self, state, action):
    deter = self.deter_step(state, action)
    logits = self.prior(deter).unflatten(-1, (self.cfg.stoch, self.cfg.classes))
    i = logits.max(-1, keepdim=True).indices
    return State(deter, (i == torch.arange(logits.shape[-1], device=logits.device)).to(logits.dtype), state.goal)

def ms(fn, n=30):
    fn(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3

def recorded(fn):
    side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2): fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): fn()
    return g.replay

dev = torch.device("cuda")
cfg = get_preset("cpu", state_dim=10, goal_start=7, goal_dim=3).world_model
torch.manual_seed(0)
model = WorldModel(cfg).to(dev).eval()
b, h = 16384, 12
state = model.rssm.initial(b, dev, torch.zeros(b, 3, device=dev))
actions = torch.rand(b, h, cfg.action_dim, device=dev) * 2 - 1
ref = model.imagine(state, actions)
works = None
for name, fn in (("a scalar", va), ("b tensor", vb), ("c compare", vc)):
    RSSM.img_step_mode = fn
    torch._dynamo.reset()
    try:
        t = time.perf_counter()
        twin = Bf16Imagine(model, compile=True)
        out = twin(state, actions)
        ct = time.perf_counter() - t
        sd = slice(cfg.deter, -3)
        agree = (out.feat[..., sd].float() == ref.feat[..., sd]).float().mean().item()
        rep = recorded(lambda: twin(state, actions))
        print(f"{name}: compiled in {ct:.0f} s, mode agreement {agree:.3f}, graph replay {ms(rep):.2f} ms", flush=True)
        works = works or fn
    except Exception as e:
        print(f"{name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
if works is not None:
    RSSM.img_step_mode = works
    torch._dynamo.reset()
    mpc = MPCConfig(horizon=12, optim=OptimizerConfig(num_samples=1024, num_elites=64, iterations=6))
    for n in (1, 16):
        rng = np.random.default_rng(0)
        obs = {"pixels": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
               "state": rng.uniform(-0.2, 0.2, (n, 10)).astype(np.float32)}
        for kw in ({"whole_plan": True}, {"whole_plan": True, "compile": True}):
            pol = WorldModelMPCPolicy(model, mpc, dev, **kw); pol.reset(n)
            pol.act(obs); torch.cuda.synchronize()
            lat = []
            for _ in range(20):
                t = time.perf_counter(); pol.act(obs); torch.cuda.synchronize(); lat.append((time.perf_counter() - t) * 1e3)
            print(f"planner {n} envs {kw}: p50 {np.median(lat):.2f} ms p95 {np.percentile(lat, 95):.2f}", flush=True)
