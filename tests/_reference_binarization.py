# ruff: noqa: E501, B007, F841, RUF059
"""Transcriptions of the authors' code of BiLLM and ARB-LLM_RC, the references of
tests/test_solvers_binarization.py (the style of tests/test_solvers_quant_gptq.py).

* BiLLM, github.com/Aaronhuang-778/BiLLM at commit f7f9e14 (unchanged up to dc137eb):
  ``binary.py`` (``high_order_residual``, ``Binarization``), ``utils/mask.py``
  (``generate_structural_mask``), ``utils/autosearch.py`` (``error_computing``,
  ``structural_searching``), ``utils/structure.py`` (``structural_guassian_distribution``),
  ``bigptq.py`` (``BRAGPTQ``).
* ARB-LLM, github.com/ZHITENGLI/ARB-LLM at commit 8512765 (the newest tree holds only the README):
  ``binary_arb.py`` (``high_order_residual_alternating_order2_rc_nomean``,
  ``high_order_residual_alternating_order1_rc_nomean``, ``Binarization``),
  ``utils/autosearch_arb.py`` (``structural_searching_multip_alternating_group_rc``, as fixed in
  commit d57e7f7: at 8512765 it passes ``iter2=0`` to a function without that keyword and fails),
  ``utils/structure_arb.py`` (``structural_guassian_distribution_multip_alternating_group_x``),
  ``bigptq_arb.py`` (``BRAGPTQ``). ``high_order_residual``, ``generate_structural_mask`` and
  ``error_computing`` are the same in both repositories and transcribed once; ARB's
  ``Binarization`` and ``BRAGPTQ`` are renamed ``BinarizationARB`` and ``BRAGPTQ_ARB`` (marked).

Line for line, in plain torch; the only changes (each marked "changed", "dropped" or "added"):
float64 instead of float32 (so that the comparison is not about float32 rounding), no CUDA
(``torch.cuda.*`` calls dropped), no Conv1D/Conv2d branches, no prints/logging/DEBUG blocks,
branches of other methods replaced by ``raise NotImplementedError``, and added lines that record
the masks of each block. ``torch.sign(nan)`` is 0 (on CPU as on CUDA), which the authors' code
relies on: off the mask the NaN placeholders give sign 0, so that ``binary * mask`` is 0 there.
The ruff codes above are the authors' long lines and unused variables, kept as they are.
"""

import math

import numpy as np
import torch
import torch.nn as nn

# ==== BiLLM binary.py ==================================================================================

index = 0


@torch.no_grad()
def high_order_residual(x, mask, order=2):
    sum_order = torch.zeros_like(x)
    new_matrix = x.clone()
    new_matrix = new_matrix * mask
    global index
    index += 1
    for od in range(order):
        residual = new_matrix - sum_order
        masked_x_tensor = torch.where(mask, residual, torch.tensor(float('nan')))

        mean_tensor_all = torch.nanmean(masked_x_tensor, dim=1)
        mean_tensor_all = torch.where(torch.isnan(mean_tensor_all), torch.zeros_like(mean_tensor_all), mean_tensor_all)
        masked_x_tensor -= mean_tensor_all[:, None]
        scale_tensor_all = torch.nanmean(torch.abs(masked_x_tensor), dim=1)
        scale_tensor_all = torch.where(torch.isnan(scale_tensor_all), torch.zeros_like(scale_tensor_all), scale_tensor_all)

        binary= torch.sign(masked_x_tensor)
        binary *= scale_tensor_all[:, None]
        binary += mean_tensor_all[:, None]
        sum_order = sum_order + binary*mask

    return sum_order


class Binarization(nn.Module):
    def __init__(self, weight, method="2bit", groupsize=-1):
        super().__init__()
        oc,ic=weight.shape
        if groupsize==-1:
            groupsize=ic
        self.groupsize=groupsize
        self.n_groups=math.ceil(ic/groupsize)
        self.method=method
        self.mean = 0

    def quantize(self, w, mask, order=2, groupi=0):
        if self.method=="braq": # The method used in paper
            w = high_order_residual(w, mask, order=order)
        else:
            raise NotImplementedError  # dropped: "xnor", "sign", "rtn", "2bit", "4bit", "prune"
        return w


# ==== BiLLM utils/mask.py (= ARB-LLM utils/mask.py) =====================================================

def generate_structural_mask(origin_matrix, mask3, braq1_border):
    mask1_2 = ~mask3

    binary_group = torch.abs(origin_matrix*mask1_2)

    mask2 = binary_group >= braq1_border
    mask1 = binary_group < braq1_border

    mask1 = mask1 * mask1_2
    mask2 = mask2 * mask1_2

    return mask1, mask2


# ==== BiLLM utils/autosearch.py ========================================================================

def error_computing(origin_matrix, quantized_matrix):
    mse = torch.mean((origin_matrix - quantized_matrix) ** 2)
    return mse


def structural_searching(origin_matrix, up_lim=30):
    minimal_value = float('inf')
    minimal_value_0 = float('inf')

    true_counts = origin_matrix.abs().sum(dim=0)

    error = []
    lines = []
    # search for the optimal split for the first group, high order=2,, structured search
    _, top_braq_2_columns = torch.topk(true_counts, up_lim)
    for i in range(1, up_lim):
        mask3 = torch.full((origin_matrix.shape[0], origin_matrix.shape[1]), False).to(origin_matrix.device)
        mask3[:, top_braq_2_columns[:i]] = True
        group3 = high_order_residual(origin_matrix, mask3, order=2)

        group4 = high_order_residual(origin_matrix, ~mask3, order=2)
        quantize_error_0 = error_computing(origin_matrix, group4+group3)
        error.append(quantize_error_0.item())
        lines.append(i)
        if quantize_error_0 < minimal_value_0:
            minimal_value_0 = quantize_error_0
            optimal_split_0 = i

    _, top_braq_2_columns = torch.topk(true_counts, optimal_split_0)
    mask3 = torch.full((origin_matrix.shape[0], origin_matrix.shape[1]), False).to(origin_matrix.device)
    mask3[:, top_braq_2_columns] = True
    group3 = high_order_residual(origin_matrix, mask3, order=2)

    search_matrix = origin_matrix * (~mask3)

    flat_abs_tensor = torch.abs(search_matrix).view(-1)
    percentiles = torch.linspace(0.10, 0.90, 81).to(origin_matrix.device)
    percentile_values = torch.tensor(
        np.quantile(flat_abs_tensor.detach().cpu().numpy(), q=percentiles.cpu().numpy(), axis=None, keepdims=False)
    ).to(origin_matrix.device)

    # search for the optimal split for the second group, high order=1,, non-structured search
    for split_value in percentile_values:
        mask1, mask2 = generate_structural_mask(origin_matrix, mask3, split_value)
        group1 = high_order_residual(origin_matrix, mask1, order=1)
        group2 = high_order_residual(origin_matrix, mask2, order=1)

        quantize_error = error_computing(origin_matrix, group1+group2+group3)
        if quantize_error < minimal_value:
            minimal_value = quantize_error
            optimal_split = split_value
        tmp = torch.max(torch.abs(search_matrix)).item()

    return optimal_split, mask3


# ==== BiLLM utils/structure.py =========================================================================

def structural_guassian_distribution(tmp, H=None, metric="magnitude", up_lim=30):
    if metric == "hessian":
        target_weights = tmp ** 2 / (torch.diag(H).reshape((1, -1))) ** 2
    elif metric == "magnitude":
        target_weights = tmp
    else:
        raise NotImplementedError

    optimal_split, mask3 = structural_searching(target_weights, up_lim)
    mask1, mask2 = generate_structural_mask(target_weights, mask3, optimal_split)

    # dropped: print of the three mask ratios
    return mask1, mask2, mask3


# ==== BiLLM bigptq.py ==================================================================================

class BRAGPTQ:
    def __init__(
        self, layer, braq_quantizer,salient_metric, disable_gptq=False
    ):
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        # dropped: the Conv2d and transformers.Conv1D branches
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev, dtype=torch.float64)  # changed: float64
        self.nsamples = 0
        self.braq_quantizer = braq_quantizer
        self.salient_metric = salient_metric  # "magnitude" or "hessian"
        self.disable_gptq = disable_gptq
        self.masks = []  # added: the masks of each block

    def add_batch(self, inp, out, blocksize=1024):
        # dropped: DEBUG block
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):  # changed: no transformers.Conv1D
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.double()  # changed: float64
        self.H += inp.matmul(inp.t())

    def fasterquant(self,
                    blocksize=128,
                    percdamp=0.01,
                    partition=3,
                    orders=(1,1,2),
                    ):
        W = self.layer.weight.data.clone()
        # dropped: the Conv2d and transformers.Conv1D branches
        W = W.double()  # changed: float64
        # dropped: tick = time.time()

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        Losses = torch.zeros(self.rows, device=self.dev, dtype=torch.float64)  # changed: float64

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        for blocki, col_st in enumerate(range(0, self.columns, blocksize)):
            col_ed = min(col_st + blocksize, self.columns)
            n_cols = col_ed - col_st

            st = col_st
            ed = col_ed
            mask = torch.zeros_like(W[:, st:ed], dtype=torch.bool).unsqueeze(0).repeat_interleave(partition, dim=0)
            mask1, mask2, mask3 = structural_guassian_distribution(W[:, st:ed], H[st:ed, st:ed], self.salient_metric, 50)
            mask[0] = mask1
            mask[1] = mask2
            mask[2] = mask3
            self.masks.append(mask.clone())  # added

            assert self.braq_quantizer.groupsize % blocksize == 0

            if self.disable_gptq:
                raise NotImplementedError  # dropped: the RTN branch
            else:
                # shape of W1: [oc, n_cols]
                W1 = W[:, col_st:col_ed].clone()
                Q1 = torch.zeros_like(W1)
                Err1 = torch.zeros_like(W1)
                Losses1 = torch.zeros_like(W1)
                Hinv1 = Hinv[col_st:col_ed, col_st:col_ed]

                q_part_groups = []

                for i in range(mask.shape[0]):
                    q_part_groups.append(self.braq_quantizer.quantize(W1, mask[i], order=orders[i]))

                for i in range(n_cols):
                    # shape of w: [oc, 1]
                    w = W1[:, i]
                    d = Hinv1[i, i]

                    q = torch.zeros_like(w)
                    for j in range(mask.shape[0]):
                        q += q_part_groups[j][:, i] * mask[j, :, i]

                    Q1[:, i] = q
                    Losses1[:, i] = (w - q) ** 2 / d**2

                    err1 = (w - q) / d
                    Err1[:, i] = err1

                W[:, col_st:col_ed] = Q1
                Losses += torch.sum(Losses1, 1) / 2

                W[:, col_ed:] -= Err1.matmul(Hinv[col_st:col_ed, col_ed:])

                # dropped: DEBUG block

        # dropped: torch.cuda.synchronize() and the prints of time and error

        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(
            self.layer.weight.data.dtype
        )
        # dropped: DEBUG print, the del statements and torch.cuda.empty_cache()
        return {"error": torch.sum(Losses).item()}


# ==== ARB-LLM binary_arb.py =============================================================================

@torch.no_grad()
def high_order_residual_alternating_order2_rc_nomean(x, mask, order=2, iter=15):
    sum_order = torch.zeros_like(x)
    new_matrix = x.clone()
    new_matrix = new_matrix * mask
    global index
    index += 1
    binary_list = []
    alpha_list_r = []
    alpha_list_c = []
    for od in range(order):
        residual = new_matrix - sum_order
        masked_x_tensor = torch.where(mask, residual, torch.tensor(float('nan')))

        # alpha row
        scale_tensor_all_r = torch.nanmean(torch.abs(masked_x_tensor), dim=1)
        scale_tensor_all_r = torch.where(torch.isnan(scale_tensor_all_r), torch.zeros_like(scale_tensor_all_r), scale_tensor_all_r)
        alpha_list_r.append(scale_tensor_all_r.clone())
        # alpha column
        scale_tensor_all_c = torch.nanmean(torch.abs(masked_x_tensor / scale_tensor_all_r[:, None]), dim=0)
        scale_tensor_all_c = torch.where(torch.isnan(scale_tensor_all_c), torch.zeros_like(scale_tensor_all_c), scale_tensor_all_c)
        alpha_list_c.append(scale_tensor_all_c.clone())

        binary= torch.sign(masked_x_tensor)
        binary_list.append(binary.clone())
        binary *= scale_tensor_all_r[:, None]
        binary *= scale_tensor_all_c[None, :]
        sum_order = sum_order + binary*mask

    # Alternating update
    sum_order_alternating = sum_order.clone()

    for k in range(iter):
        # 2-1. Fix mean, alpha column, and B, update alpha row 0
        W_tilde = new_matrix - (alpha_list_c[1][None, :] * alpha_list_r[1][:, None] * binary_list[1]) * mask
        alpha_c_B = alpha_list_c[0][None, :] * binary_list[0] * mask
        alpha_list_r[0] = torch.sum(alpha_c_B * W_tilde, dim=1) / (torch.sum(alpha_c_B * alpha_c_B, dim=1) + 1e-8)

        # 2-2. Fix mean, alpha row, and B, update alpha column 0
        alpha_r_B =  alpha_list_r[0][:, None] * binary_list[0] * mask
        alpha_list_c[0] = torch.sum(alpha_r_B * W_tilde, dim=0) / (torch.sum(alpha_r_B * alpha_r_B, dim=0) + 1e-8)

        # 2-3. Fix mean, alpha column, and B, update alpha row 1
        W_tilde = new_matrix - (alpha_list_c[0][None, :] * alpha_list_r[0][:, None] * binary_list[0]) * mask
        alpha_c_B = alpha_list_c[1][None, :] * binary_list[1] * mask
        alpha_list_r[1] = torch.sum(alpha_c_B * W_tilde, dim=1) / (torch.sum(alpha_c_B * alpha_c_B, dim=1) + 1e-8)

        # 2-4. Fix mean, alpha row, and B, update alpha column 1
        alpha_r_B =  alpha_list_r[1][:, None] * binary_list[1] * mask
        alpha_list_c[1] = torch.sum(alpha_r_B * W_tilde, dim=0) / (torch.sum(alpha_r_B * alpha_r_B, dim=0) + 1e-8)

        # 3. Fix mean and alpha, update B
        new_matrix_expanded = new_matrix.unsqueeze(-1)
        comb0 = alpha_list_r[0].reshape(-1, 1) @ alpha_list_c[0].reshape(1, -1)
        comb1 = alpha_list_r[1].reshape(-1, 1) @ alpha_list_c[1].reshape(1, -1)
        v = torch.stack([-comb0 - comb1, -comb0 + comb1,
                    comb0 - comb1, comb0 + comb1], dim=2)

        min_indices = torch.argmin(torch.abs(new_matrix_expanded - v), dim=-1)

        binary_list[0] = torch.ones_like(min_indices)
        binary_list[0][(min_indices == 0) | (min_indices == 1)] = -1
        binary_list[1] = torch.ones_like(min_indices)
        binary_list[1][(min_indices == 0) | (min_indices == 2)] = -1

        # Final refine results
        sum_order_alternating = torch.zeros_like(x) + (alpha_list_c[0][None, :] * alpha_list_r[0][:, None] * binary_list[0] + alpha_list_c[1][None, :] * alpha_list_r[1][:, None] * binary_list[1]) * mask

    return sum_order_alternating


@torch.no_grad()
def high_order_residual_alternating_order1_rc_nomean(x, mask, order=2, iter=15):
    sum_order = torch.zeros_like(x)
    new_matrix = x.clone()
    new_matrix = new_matrix * mask
    global index
    index += 1
    for od in range(order):
        residual = new_matrix - sum_order
        masked_x_tensor = torch.where(mask, residual, torch.tensor(float('nan')))

        # alpha row
        scale_tensor_all_r = torch.nanmean(torch.abs(masked_x_tensor), dim=1)
        scale_tensor_all_r = torch.where(torch.isnan(scale_tensor_all_r), torch.zeros_like(scale_tensor_all_r), scale_tensor_all_r)
        # alpha column
        scale_tensor_all_c = torch.nanmean(torch.abs(masked_x_tensor / scale_tensor_all_r[:, None]), dim=0)
        scale_tensor_all_c = torch.where(torch.isnan(scale_tensor_all_c), torch.zeros_like(scale_tensor_all_c), scale_tensor_all_c)

        binary= torch.sign(masked_x_tensor)
        new_binary = binary.clone()
        binary *= scale_tensor_all_r[:, None]
        binary *= scale_tensor_all_c[None, :]
        sum_order = sum_order + binary*mask

    # Alternating update
    sum_order_alternating = sum_order.clone()
    new_alpha_r = scale_tensor_all_r.clone()
    new_alpha_c = scale_tensor_all_c.clone()
    for k in range(iter):
        # 1-1. Fix mean, alpha column, and B, update alpha row
        alpha_c_B = new_alpha_c[None, :] * new_binary * mask
        new_alpha_r = torch.sum(alpha_c_B * new_matrix, dim=1) / (torch.sum(alpha_c_B * alpha_c_B, dim=1) + 1e-8)

        # 1-2. Fix mean, alpha row, and B, update alpha column
        alpha_r_B = new_alpha_r[:, None] * new_binary * mask
        new_alpha_c = torch.sum(alpha_r_B * new_matrix, dim=0) / (torch.sum(alpha_r_B * alpha_r_B, dim=0) + 1e-8)

        # Final refine results
        sum_order_alternating = torch.zeros_like(x) + new_alpha_c[None, :] * new_alpha_r[:, None] * new_binary * mask

    return sum_order_alternating


class BinarizationARB(nn.Module):  # changed: renamed from Binarization
    def __init__(self, weight, method="arb", groupsize=-1):
        super().__init__()
        oc,ic=weight.shape
        if groupsize==-1:
            groupsize=ic
        self.groupsize=groupsize
        self.n_groups=math.ceil(ic/groupsize)
        self.method=method
        self.mean = 0

    def quantize(self, w, mask, order=2, groupi=0, S=None):
        if self.method=="braq": # The method used in BiLLM
            w = high_order_residual(w, mask, order=order)

        # arb series
        elif self.method == 'arb-rc':
            if order == 2:
                w = high_order_residual_alternating_order2_rc_nomean(w, mask, order=order)
            else:
                w = high_order_residual_alternating_order1_rc_nomean(w, mask, order=order)
        else:
            raise NotImplementedError  # dropped: "xnor", "arb", "arb-x", "sign", "rtn", "2bit", "4bit", "prune"
        return w


# ==== ARB-LLM utils/autosearch_arb.py (commit d57e7f7) ==================================================

def structural_searching_multip_alternating_group_rc(origin_matrix, up_lim=30, num_p=1, inp=None, iter=0, order2_group=False):
    minimal_value = float('inf')
    minimal_value_0 = float('inf')

    true_counts = origin_matrix.abs().sum(dim=0)

    # search for the optimal split for the first group, high order=2,, structured search
    _, top_braq_2_columns = torch.topk(true_counts, up_lim)
    for i in range(1, up_lim):
        mask3 = torch.full((origin_matrix.shape[0], origin_matrix.shape[1]), False).to(origin_matrix.device)
        mask3[:, top_braq_2_columns[:i]] = True
        group3 = high_order_residual(origin_matrix, mask3, order=2)   # for fair comparison and accelerate
        group4 = high_order_residual(origin_matrix, ~mask3, order=2)   # for fair comparison and accelerate

        quantize_error_0 = error_computing(origin_matrix, group4+group3)

        if quantize_error_0 < minimal_value_0:
            minimal_value_0 = quantize_error_0
            optimal_split_0 = i


    _, top_braq_2_columns = torch.topk(true_counts, optimal_split_0)
    mask3 = torch.full((origin_matrix.shape[0], origin_matrix.shape[1]), False).to(origin_matrix.device)
    mask3[:, top_braq_2_columns] = True

    group3 = high_order_residual_alternating_order2_rc_nomean(origin_matrix, mask3, order=2)

    mask_list = []
    optimal_split_list = []

    # 2nd order group
    if order2_group:
        mask0 = mask3.clone()
        minimal_value2 = float('inf')
        group0 = torch.zeros(origin_matrix.shape, device=origin_matrix.device)
        for i in range(num_p):
            search_matrix = origin_matrix * mask0

            flat_abs_tensor = torch.abs(search_matrix).view(-1)
            flat_abs_tensor_nonzero = flat_abs_tensor[flat_abs_tensor != 0]
            percentiles = torch.linspace(0.10, 0.90, 81).to(origin_matrix.device)
            percentile_values = torch.tensor(
                np.quantile(flat_abs_tensor_nonzero.detach().cpu().numpy(), q=percentiles.cpu().numpy(), axis=None, keepdims=False)
            ).to(origin_matrix.device)

            # search for the optimal split for the second group, high order=1,, non-structured search
            flag = False
            for split_value in percentile_values:
                mask4, mask5 = generate_structural_mask(origin_matrix, ~mask0, split_value)
                group1 = high_order_residual(origin_matrix, mask4, order=2)
                group2 = high_order_residual(origin_matrix, mask5, order=2)

                quantize_error = error_computing(origin_matrix, group1+group2+group0)
                if quantize_error < minimal_value2:
                    minimal_value2 = quantize_error
                    optimal_split = split_value
                    optimal_group2 = group2
                    best_mask4 = mask4
                    best_mask5 = mask5
                    flag = True

            if not flag:
                # dropped: print(False, 2)
                optimal_split = percentile_values[0]
                best_mask4, best_mask5 = generate_structural_mask(origin_matrix, ~mask0, optimal_split)

            mask0 = mask0 & (~best_mask5)
            mask_list.append(best_mask5)
            group0 = group0 + optimal_group2

        mask_list.append(best_mask4)

    else:
        mask_list.append(mask3)

    # 1st order group
    for i in range(num_p):
        search_matrix = origin_matrix * (~mask3)

        flat_abs_tensor = torch.abs(search_matrix).view(-1)
        percentiles = torch.linspace(0.10, 0.90, 81).to(origin_matrix.device)
        percentile_values = torch.tensor(
            np.quantile(flat_abs_tensor.detach().cpu().numpy(), q=percentiles.cpu().numpy(), axis=None, keepdims=False)
        ).to(origin_matrix.device)

        # search for the optimal split for the second group, high order=1,, non-structured search
        flag = False
        for split_value in percentile_values:
            mask1, mask2 = generate_structural_mask(origin_matrix, mask3, split_value)

            group1 = high_order_residual(origin_matrix, mask1, order=1)
            group2 = high_order_residual(origin_matrix, mask2, order=1)

            quantize_error = error_computing(origin_matrix, group1+group2+group3)
            if quantize_error < minimal_value:
                minimal_value = quantize_error
                optimal_split = split_value
                best_mask2 = mask2
                best_mask1 = mask1
                flag = True

        if not flag:
            # dropped: print(False)
            optimal_split = percentile_values[0]
            best_mask1, best_mask2 = generate_structural_mask(origin_matrix, mask3, optimal_split)

        optimal_group2 = high_order_residual_alternating_order1_rc_nomean(origin_matrix, best_mask2, order=1, iter=0)
        mask_list.append(best_mask2)
        optimal_split_list.append(optimal_split)
        group3 = group3 + optimal_group2
        mask3 = mask3 | best_mask2

    mask_list.append(best_mask1)

    return optimal_split_list, mask_list


# ==== ARB-LLM utils/structure_arb.py ====================================================================

def structural_guassian_distribution_multip_alternating_group_x(tmp, H=None, metric="magnitude", up_lim=30, num_p=1, inp=None, method='arb', order2_group=False):
    if metric == "hessian":
        target_weights = tmp ** 2 / (torch.diag(H).reshape((1, -1))) ** 2
    elif metric == "magnitude":
        target_weights = tmp
    else:
        raise NotImplementedError

    if method == 'arb-rc':
        optimal_split_list, mask_list = structural_searching_multip_alternating_group_rc(target_weights, up_lim, num_p, inp, order2_group=order2_group)
    else:
        raise NotImplementedError  # dropped: "arb", "arb-x", "braq"

    # dropped: the log of the mask ratios
    return mask_list


# ==== ARB-LLM bigptq_arb.py =============================================================================

class BRAGPTQ_ARB:  # changed: renamed from BRAGPTQ
    def __init__(
        self, layer, braq_quantizer,salient_metric, disable_gptq=False, method='arb', order2_group=False
    ):
        self.method = method
        self.order2_group = order2_group
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        # dropped: the Conv2d and transformers.Conv1D branches
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev, dtype=torch.float64)  # changed: float64
        self.nsamples = 0
        self.braq_quantizer = braq_quantizer
        self.salient_metric = salient_metric  # "magnitude" or "hessian"
        self.disable_gptq = disable_gptq

        self.inp = []
        self.masks = []  # added: the masks of each block

    def add_batch(self, inp, out, blocksize=1024):
        # dropped: DEBUG block (it keeps inp and out for a log of the output error)

        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)

        if self.method == 'arb-x':
            self.inp.append(inp)

        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):  # changed: no transformers.Conv1D
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.double()  # changed: float64
        self.H += inp.matmul(inp.t())

    def fasterquant(self,
                    blocksize=128,
                    percdamp=0.01,
                    orders=(1,1,2),
                    num_p=1,
                    ):
        W = self.layer.weight.data.clone()
        # dropped: the Conv2d and transformers.Conv1D branches
        W = W.double()  # changed: float64
        # dropped: tick = time.time()

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        Losses = torch.zeros(self.rows, device=self.dev, dtype=torch.float64)  # changed: float64

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        if self.method == 'arb-x':
            self.inp = torch.concat(self.inp)

        for blocki, col_st in enumerate(range(0, self.columns, blocksize)):
            col_ed = min(col_st + blocksize, self.columns)
            n_cols = col_ed - col_st

            st = col_st
            ed = col_ed

            if self.method == 'arb-x':
                S = torch.matmul(self.inp[:, :, st:ed].to(torch.float64).transpose(1, 2), self.inp[:, :, st:ed].to(torch.float64)).mean(dim=0)   # changed: float64
            else:
                S = None

            if self.order2_group:
                num_mask = 2 * (num_p+1)
                orders = [2 for _ in range(num_p+1)] + [1 for _ in range(num_p+1)]
            else:
                num_mask = 1 + num_p + 1
                orders = [2] + [1 for _ in range(num_p+1)]
            mask = torch.zeros_like(W[:, st:ed], dtype=torch.bool).unsqueeze(0).repeat_interleave(num_mask, dim=0)
            mask_list = structural_guassian_distribution_multip_alternating_group_x(W[:, st:ed], H[st:ed, st:ed], self.salient_metric, 50, num_p, S, self.method, self.order2_group)
            for i in range(num_mask):
                mask[i] = mask_list[i]
            self.masks.append(mask.clone())  # added

            assert self.braq_quantizer.groupsize % blocksize == 0

            if self.disable_gptq:
                raise NotImplementedError  # dropped: the RTN branch
            else:
                # shape of W1: [oc, n_cols]
                W1 = W[:, col_st:col_ed].clone()
                Q1 = torch.zeros_like(W1)
                Err1 = torch.zeros_like(W1)
                Losses1 = torch.zeros_like(W1)
                Hinv1 = Hinv[col_st:col_ed, col_st:col_ed]

                q_part_groups = []

                for i in range(mask.shape[0]):
                    q_part_groups.append(self.braq_quantizer.quantize(W1, mask[i], order=orders[i], S=S))

                for i in range(n_cols):
                    # shape of w: [oc, 1]
                    w = W1[:, i]
                    d = Hinv1[i, i]

                    q = torch.zeros_like(w)
                    for j in range(mask.shape[0]):
                        q += q_part_groups[j][:, i] * mask[j, :, i]

                    Q1[:, i] = q
                    Losses1[:, i] = (w - q) ** 2 / d**2

                    err1 = (w - q) / d
                    Err1[:, i] = err1

                W[:, col_st:col_ed] = Q1
                Losses += torch.sum(Losses1, 1) / 2

                W[:, col_ed:] -= Err1.matmul(Hinv[col_st:col_ed, col_ed:])

                # dropped: DEBUG block

        # dropped: torch.cuda.synchronize() and the logs of time, error and x error

        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(
            self.layer.weight.data.dtype
        )
        # dropped: DEBUG print, the del statements and torch.cuda.empty_cache()
        return {"error": torch.sum(Losses).item()}


# ==== the authors' pipelines for one Linear layer (run.py, run_arb.py), float64 =========================

def _linear(W):
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=torch.float64)
    layer.weight.data = torch.from_numpy(W.copy())
    return layer


def reference_billm(W, X, *, blocksize=128, percdamp=0.01, salient_metric="hessian"):
    """``run.py ... braq --blocksize 128 --salient_metric hessian``: (Ŵ, masks per block)."""
    layer = _linear(W)
    g = BRAGPTQ(layer, Binarization(layer.weight, method="braq", groupsize=blocksize),
                salient_metric=salient_metric, disable_gptq=False)
    g.add_batch(torch.from_numpy(X)[:, None, :], None)  # N samples of one token: H = 2/N·XᵀX
    g.fasterquant(percdamp=percdamp, blocksize=blocksize)
    return layer.weight.data.numpy(), [m.numpy() for m in g.masks]


def reference_arb_rc(W, X, *, blocksize=128, percdamp=0.01, salient_metric="hessian", order2_group=True):
    """``run_arb.py ... arb-rc --blocksize 128 --salient_metric hessian --num_p 1 --order2_group``:
    (Ŵ, masks per block)."""
    layer = _linear(W)
    g = BRAGPTQ_ARB(layer, BinarizationARB(layer.weight, method="arb-rc", groupsize=blocksize),
                    salient_metric=salient_metric, disable_gptq=False, method="arb-rc",
                    order2_group=order2_group)
    g.add_batch(torch.from_numpy(X)[:, None, :], None)
    g.fasterquant(percdamp=percdamp, blocksize=blocksize, num_p=1)
    return layer.weight.data.numpy(), [m.numpy() for m in g.masks]
