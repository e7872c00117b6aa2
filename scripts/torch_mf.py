#!/usr/bin/env python3
"""The peer a CUDA user would pick: biased matrix factorization in PyTorch
with sparse embeddings and plain SGD, on the split `rowstage split` writes.

    rowstage split --synthetic 50000,20000,10000000 --out DIR
    python3 scripts/torch_mf.py --train DIR/train.tsv --test DIR/test.tsv \
        [--device cuda] [--epochs 20] [--json OUT.json]

The model is rowstage's: r̂ = μ + b_u + b_i + p_u·q_i, with L2 on the factors
(--reg) and the biases (--bias-reg), factors drawn from N(0, 0.1²), rank 32.
Each step takes a shuffled batch (--batch) and the mean of its squared errors
plus the L2 terms of the rows it touched; sparse gradients, `torch.optim.SGD`.
ratings/s = training ratings × epochs / training seconds (the device
synchronised before the clock stops; evaluation is outside it). Test RMSE
predicts a rating whose user or item never appears in training from μ and
the bias it has, clamped to the training range, as rowstage does.
"""

import argparse
import json
import sys
import time

import torch


def read(path, users, items, grow):
    """Ratings of a tab-separated `user item rating` file as three tensors;
    ids are mapped through `users`/`items` (extended only when `grow`; an
    unknown id maps to -1)."""
    u, i, r = [], [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split("\t")
            if len(parts) < 3:
                sys.exit(f"{path}:{n}: expected user<TAB>item<TAB>rating")
            for ids, name, out in ((users, parts[0], u), (items, parts[1], i)):
                k = ids.get(name)
                if k is None and grow:
                    k = ids[name] = len(ids)
                out.append(-1 if k is None else k)
            r.append(float(parts[2]))
    return torch.tensor(u), torch.tensor(i), torch.tensor(r)


class BiasedMF(torch.nn.Module):
    def __init__(self, n_users, n_items, rank, mean):
        super().__init__()
        self.p = torch.nn.Embedding(n_users, rank, sparse=True)
        self.q = torch.nn.Embedding(n_items, rank, sparse=True)
        self.bu = torch.nn.Embedding(n_users, 1, sparse=True)
        self.bi = torch.nn.Embedding(n_items, 1, sparse=True)
        for e in (self.p, self.q):
            torch.nn.init.normal_(e.weight, std=0.1)
        for e in (self.bu, self.bi):
            torch.nn.init.zeros_(e.weight)
        self.mean = mean

    def forward(self, u, i):
        p, q = self.p(u), self.q(i)
        bu, bi = self.bu(u).squeeze(-1), self.bi(i).squeeze(-1)
        return self.mean + bu + bi + (p * q).sum(-1), p, q, bu, bi


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=5.0,
                    help="SGD step on the batch's mean loss (about lr / batch per rating); 5 is the largest of 2, 5, 20 that did not diverge on the skewed default synthetic data")
    ap.add_argument("--reg", type=float, default=0.05)
    ap.add_argument("--bias-reg", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    users, items = {}, {}
    t0 = time.time()
    tu, ti, tr = read(a.train, users, items, True)
    eu, ei, er = read(a.test, users, items, False)
    load_s = time.time() - t0
    lo, hi = tr.min().item(), tr.max().item()
    mean = tr.mean().item()
    model = BiasedMF(len(users), len(items), a.rank, mean).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    tu, ti, tr = tu.to(dev), ti.to(dev), tr.to(dev)
    n = tr.numel()

    def evaluate():
        with torch.no_grad():
            u, i, r = eu.to(dev), ei.to(dev), er.to(dev)
            ku, ki = u >= 0, i >= 0
            uc, ic = u.clamp(min=0), i.clamp(min=0)
            pred = mean + model.bu(uc).squeeze(-1) * ku + model.bi(ic).squeeze(-1) * ki
            pred = pred + (model.p(uc) * model.q(ic)).sum(-1) * (ku & ki)
            err = pred.clamp(lo, hi) - r
            return err.pow(2).mean().sqrt().item(), err.abs().mean().item()

    epochs, train_s = [], 0.0
    for epoch in range(a.epochs):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.time()
        perm = torch.randperm(n, device=dev)
        sse = torch.zeros((), device=dev)
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            pred, p, q, bu, bi = model(tu[idx], ti[idx])
            err = pred - tr[idx]
            loss = (err.pow(2) + a.reg * (p.pow(2).sum(-1) + q.pow(2).sum(-1))
                    + a.bias_reg * (bu.pow(2) + bi.pow(2))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sse += err.detach().pow(2).sum()
        train_rmse = (sse / n).sqrt().item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.time() - t
        train_s += seconds
        rmse, mae = evaluate()
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "train_rmse": train_rmse, "test_rmse": rmse})
        print(f"epoch {epoch + 1:>3}  train {train_rmse:.4f}  test {rmse:.4f}  {n / seconds:.3e} ratings/s", flush=True)
    rmse, mae = evaluate()
    result = {
        "peer": "pytorch biased MF, sparse embeddings, SGD",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "rank": a.rank, "batch": a.batch, "lr": a.lr, "reg": a.reg, "bias_reg": a.bias_reg,
        "epochs": a.epochs, "train_ratings": n, "test_ratings": er.numel(),
        "load_seconds": load_s, "train_seconds": train_s,
        "ratings_per_sec": n * a.epochs / max(train_s, 1e-9),
        "test_rmse": rmse, "test_mae": mae, "per_epoch": epochs,
    }
    print(f"final: test RMSE {rmse:.4f}  MAE {mae:.4f}  {result['ratings_per_sec']:.3e} ratings/s on {result['device']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
