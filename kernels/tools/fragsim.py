#!/usr/bin/env python3
"""CPU model of the tensor-core fragment addressing used in cuda/matmul.cu and cuda/attention.cu.

No GPU and no dependencies: it emulates `ldmatrix` (.x4, with and without .trans) and
`mma.sync.m16n8k16.row.col` per the PTX ISA fragment layouts (the non-.trans ones were verified on an
H200, see kernels/README.md, "Tensor-core fragments"), replays the shared-memory address formulas of the kernels for one warp
(matmul: all four operand layouts; attention: S = QK^T, O = PV, S^T, dV, dP^T, dK, the dS^T smem
round trip and dQ) on small integer matrices, and asserts exact agreement with plain products.
The formulas are copied by hand: when you change an ldmatrix address in a kernel, change it here too
and run `python3 kernels/tools/fragsim.py`.
"""
import random
def ldsm(smem, addr, trans):
    # addr(lane) -> (row, col); returns regs[lane][i] = (v0, v1)
    rows = [addr(l) for l in range(32)]
    regs = [[None]*4 for _ in range(32)]
    for i in range(4):
        M = [[smem[rows[8*i+r][0]][rows[8*i+r][1]+c] for c in range(8)] for r in range(8)]
        for l in range(32):
            if not trans: regs[l][i] = (M[l//4][2*(l%4)], M[l//4][2*(l%4)+1])
            else: regs[l][i] = (M[2*(l%4)][l//4], M[2*(l%4)+1][l//4])
    return regs
def mma(d, a, b0, b1):
    # d[lane] = [4], a[lane] = 4 pairs, b0[lane], b1[lane] pairs
    A = [[0]*16 for _ in range(16)]; B = [[0]*8 for _ in range(16)]
    for l in range(32):
        g, q = l//4, l%4
        for e in range(2):
            A[g][2*q+e] = a[l][0][e]; A[g+8][2*q+e] = a[l][1][e]
            A[g][8+2*q+e] = a[l][2][e]; A[g+8][8+2*q+e] = a[l][3][e]
            B[2*q+e][g] = b0[l][e]; B[8+2*q+e][g] = b1[l][e]
    for l in range(32):
        g, q = l//4, l%4
        for e in range(2):
            d[l][e] += sum(A[g][k]*B[k][2*q+e] for k in range(16))
            d[l][2+e] += sum(A[g+8][k]*B[k][2*q+e] for k in range(16))
def acc_get(d, l, e):  # (row, col) within 16x8 tile of accumulator element
    g, q = l//4, l%4
    return (g + 8*(e>>1), 2*q + (e&1))
def rnd(r, c): return [[random.randint(-3,3) for _ in range(c)] for _ in range(r)]

# ---------------- matmul warp tile: WTM x WTN, BK = 32
def matmul_check(A_KMAJ, B_KMAJ, BM=64, BN=64, BK=32, WTM=32, WTN=32, wm0=32, wn0=32):
    Am = rnd(BM, BK)   # logical A[m][k]
    Bm = rnd(BK, BN)   # logical B[k][n]
    PAD = 8
    sA = [row + [0]*PAD for row in Am] if A_KMAJ else [[Am[m][k] for m in range(BM)] + [0]*PAD for k in range(BK)]
    sB = [[Bm[k][n] for k in range(BK)] + [0]*PAD for n in range(BN)] if B_KMAJ else [row + [0]*PAD for row in Bm]
    MT, NT = WTM//16, WTN//8
    acc = [[[[0]*4 for _ in range(32)] for _ in range(NT)] for _ in range(MT)]
    for kk in range(0, BK, 16):
        af = []
        for i in range(MT):
            if A_KMAJ: af.append(ldsm(sA, lambda l: (wm0 + 16*i + (l & 15), kk + 8*(l >> 4)), False))
            else: af.append(ldsm(sA, lambda l: (kk + (l & 7) + 8*(l >> 4), wm0 + 16*i + 8*((l >> 3) & 1)), True))
        bf = [None]*NT
        for j in range(0, NT, 2):
            if B_KMAJ: t = ldsm(sB, lambda l: (wn0 + 8*j + (l & 7) + 8*(l >> 4), kk + 8*((l >> 3) & 1)), False)
            else: t = ldsm(sB, lambda l: (kk + (l & 7) + 8*((l >> 3) & 1), wn0 + 8*j + 8*(l >> 4)), True)
            bf[j] = ([t[l][0] for l in range(32)], [t[l][1] for l in range(32)])
            bf[j+1] = ([t[l][2] for l in range(32)], [t[l][3] for l in range(32)])
        for i in range(MT):
            for j in range(NT):
                mma(acc[i][j], af[i], bf[j][0], bf[j][1])
    for i in range(MT):
        for j in range(NT):
            for l in range(32):
                for e in range(4):
                    r, c = acc_get(None, l, e)
                    m, n = wm0 + 16*i + r, wn0 + 8*j + c
                    want = sum(Am[m][k]*Bm[k][n] for k in range(BK))
                    assert acc[i][j][l][e] == want, (A_KMAJ, B_KMAJ, i, j, l, e)
    print("matmul ok", A_KMAJ, B_KMAJ)

random.seed(1)
for ak, bk in ((True, False), (True, True), (False, False), (False, True)):
    matmul_check(ak, bk)  # 64x64 tile, warp tile 32x32 (the _64 / _unaligned kernels)
    matmul_check(ak, bk, BM=128, BN=128, WTM=64, WTN=32, wm0=64, wn0=96)  # 128x128 tile, warp tile 64x32

# ---------------- attention (one warp, exact integer arithmetic; softmax skipped: P := S)
def regs_from_acc(s, ks):
    # A fragment (4 pairs per lane) from accumulators s[j][lane][e] for k-step ks
    return [[(s[2*ks][l][0], s[2*ks][l][1]), (s[2*ks][l][2], s[2*ks][l][3]),
             (s[2*ks+1][l][0], s[2*ks+1][l][1]), (s[2*ks+1][l][2], s[2*ks+1][l][3])] for l in range(32)]
def attn_check(D=32, BQ=32, warp=1):
    LDS = D + 8; KD, ND, NQ = D//16, D//8, BQ//8
    BKV = 64
    Q = rnd(BQ, D); K = rnd(BKV, D); V = rnd(BKV, D); dO = rnd(BQ, D)
    pad = lambda M: [r + [0]*8 for r in M]
    sQ, sK, sV, sdO = pad(Q), pad(K), pad(V), pad(dO)
    # forward, warp owns query rows 16w..: S = Q K^T (16 x 64)
    qf = [ldsm(sQ, lambda l: (16*warp + (l & 15), 16*kk + 8*(l >> 4)), False) for kk in range(KD)]
    s = [[[0]*4 for _ in range(32)] for _ in range(8)]
    for kk in range(KD):
        for j in range(0, 8, 2):
            t = ldsm(sK, lambda l: (8*j + (l & 7) + 8*(l >> 4), 16*kk + 8*((l >> 3) & 1)), False)
            mma(s[j], qf[kk], [x[0] for x in t], [x[1] for x in t]); mma(s[j+1], qf[kk], [x[2] for x in t], [x[3] for x in t])
    S = [[sum(Q[16*warp+i][d]*K[j][d] for d in range(D)) for j in range(64)] for i in range(16)]
    for j in range(8):
        for l in range(32):
            for e in range(4):
                r, c = acc_get(None, l, e); assert s[j][l][e] == S[r][8*j+c]
    o = [[[0]*4 for _ in range(32)] for _ in range(ND)]
    for ks in range(4):
        a = regs_from_acc(s, ks)
        for dn in range(0, ND, 2):
            t = ldsm(sV, lambda l: (16*ks + (l & 7) + 8*((l >> 3) & 1), 8*dn + 8*(l >> 4)), True)
            mma(o[dn], a, [x[0] for x in t], [x[1] for x in t]); mma(o[dn+1], a, [x[2] for x in t], [x[3] for x in t])
    for dn in range(ND):
        for l in range(32):
            for e in range(4):
                r, c = acc_get(None, l, e)
                assert o[dn][l][e] == sum(S[r][j]*V[j][8*dn+c] for j in range(64))
    print("attention fwd ok")
    # backward: block has 4 warps; warp w owns keys 16w..; queries BQ
    sdS = [[0]*(BQ+8) for _ in range(64)]
    ST = [[sum(K[kk][d]*Q[qq][d] for d in range(D)) for qq in range(BQ)] for kk in range(64)]  # S^T (P^T := S^T)
    dPT = [[sum(V[kk][d]*dO[qq][d] for d in range(D)) for qq in range(BQ)] for kk in range(64)]
    dST = [[ST[kk][qq]*dPT[kk][qq] for qq in range(BQ)] for kk in range(64)]
    for w in range(4):
        s = [[[0]*4 for _ in range(32)] for _ in range(NQ)]
        for kk in range(KD):
            ka = ldsm(sK, lambda l: (16*w + (l & 15), 16*kk + 8*(l >> 4)), False)
            for j in range(0, NQ, 2):
                t = ldsm(sQ, lambda l: (8*j + (l & 7) + 8*(l >> 4), 16*kk + 8*((l >> 3) & 1)), False)
                mma(s[j], ka, [x[0] for x in t], [x[1] for x in t]); mma(s[j+1], ka, [x[2] for x in t], [x[3] for x in t])
        for j in range(NQ):
            for l in range(32):
                for e in range(4):
                    r, c = acc_get(None, l, e); assert s[j][l][e] == ST[16*w+r][8*j+c]
        dva = [[[0]*4 for _ in range(32)] for _ in range(ND)]
        for ks in range(BQ//16):
            a = regs_from_acc(s, ks)
            for dn in range(0, ND, 2):
                t = ldsm(sdO, lambda l: (16*ks + (l & 7) + 8*((l >> 3) & 1), 8*dn + 8*(l >> 4)), True)
                mma(dva[dn], a, [x[0] for x in t], [x[1] for x in t]); mma(dva[dn+1], a, [x[2] for x in t], [x[3] for x in t])
        for dn in range(ND):
            for l in range(32):
                for e in range(4):
                    r, c = acc_get(None, l, e)
                    assert dva[dn][l][e] == sum(ST[16*w+r][qq]*dO[qq][8*dn+c] for qq in range(BQ))
        dp = [[[0]*4 for _ in range(32)] for _ in range(NQ)]
        for kk in range(KD):
            va = ldsm(sV, lambda l: (16*w + (l & 15), 16*kk + 8*(l >> 4)), False)
            for j in range(0, NQ, 2):
                t = ldsm(sdO, lambda l: (8*j + (l & 7) + 8*(l >> 4), 16*kk + 8*((l >> 3) & 1)), False)
                mma(dp[j], va, [x[0] for x in t], [x[1] for x in t]); mma(dp[j+1], va, [x[2] for x in t], [x[3] for x in t])
        for j in range(NQ):
            for l in range(32):
                for e in range(4): s[j][l][e] *= dp[j][l][e]
        dka = [[[0]*4 for _ in range(32)] for _ in range(ND)]
        for ks in range(BQ//16):
            a = regs_from_acc(s, ks)
            for l in range(32):
                g, qd = l//4, l%4
                row, col = 16*w + g, 16*ks + 2*qd
                sdS[row][col:col+2] = a[l][0]; sdS[row+8][col:col+2] = a[l][1]
                sdS[row][col+8:col+10] = a[l][2]; sdS[row+8][col+8:col+10] = a[l][3]
            for dn in range(0, ND, 2):
                t = ldsm(sQ, lambda l: (16*ks + (l & 7) + 8*((l >> 3) & 1), 8*dn + 8*(l >> 4)), True)
                mma(dka[dn], a, [x[0] for x in t], [x[1] for x in t]); mma(dka[dn+1], a, [x[2] for x in t], [x[3] for x in t])
        for dn in range(ND):
            for l in range(32):
                for e in range(4):
                    r, c = acc_get(None, l, e)
                    assert dka[dn][l][e] == sum(dST[16*w+r][qq]*Q[qq][8*dn+c] for qq in range(BQ))
    for kk in range(64):
        assert sdS[kk][:BQ] == dST[kk], kk
    WQ = BQ//16; WD = 4//WQ; DC = D//WD
    for w in range(4):
        rg, cg = w % WQ, w // WQ
        dqa = [[[0]*4 for _ in range(32)] for _ in range(DC//8)]
        for ks in range(4):
            a = ldsm(sdS, lambda l: (16*ks + (l & 7) + 8*(l >> 4), 16*rg + 8*((l >> 3) & 1)), True)
            for dn in range(0, DC//8, 2):
                t = ldsm(sK, lambda l: (16*ks + (l & 7) + 8*((l >> 3) & 1), cg*DC + 8*dn + 8*(l >> 4)), True)
                mma(dqa[dn], a, [x[0] for x in t], [x[1] for x in t]); mma(dqa[dn+1], a, [x[2] for x in t], [x[3] for x in t])
        for dn in range(DC//8):
            for l in range(32):
                for e in range(4):
                    r, c = acc_get(None, l, e)
                    qq, d = 16*rg + r, cg*DC + 8*dn + c
                    assert dqa[dn][l][e] == sum(dST[kk][qq]*K[kk][d] for kk in range(64))
    print("attention bwd ok", D, BQ)
attn_check(64, 64)  # the d=64 instantiation
attn_check(128, 32)  # the d=128 instantiation
