// Device-independent pieces of the GroupNorm ops: argument checks, the accumulate-type views of
// the parameters and statistics, the workspaces.
#include "backward_ops.h"

#include "coefficients.h"

#include <atomic>

namespace pyfusedbn {

void check_num_groups(const Tensor& input, int64_t num_groups, const char* op) {
  TORCH_CHECK_VALUE(num_groups > 0, op, ": num_groups must be positive, got ", num_groups);
  // torch's F.group_norm raises RuntimeError for this, with the same facts.
  TORCH_CHECK(input.size(1) % num_groups == 0, op,
              ": expected the number of channels in input to be divisible by num_groups, but got "
              "input of shape ", input.sizes(), " and num_groups=", num_groups);
}

void check_per_group(const Tensor& t, const char* name, const Tensor& input, int64_t num_groups,
                     const char* op) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == input.size(0) && t.size(1) == num_groups, op, ": ",
                    name, " must have shape (", input.size(0), ", ", num_groups,
                    ") (one value per sample and group), got ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device(), "; expected all tensors on one device");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

GroupAffine group_affine(const OptTensor& weight, const OptTensor& bias, const Tensor& input) {
  auto values = [&input](const OptTensor& t) { return t.has_value() ? as_acc(*t, input) : Tensor(); };
  return {values(weight), values(bias)};
}

double empty_group_rstd(double eps, at::ScalarType acc) {
  return acc == at::kDouble ? group_rstd(0.0, eps) : static_cast<double>(group_rstd(0.0f, eps));
}

GroupRowsState group_rows_state(const Tensor& mean, const Tensor& rstd, const GroupAffine& affine,
                                const BnShape& shape, int64_t groups, bool with_workspace) {
  GroupRowsState state{mean, rstd, affine, shape.channels, groups, Tensor(), Tensor(), 0};
  if (with_workspace) {
    state.parts = group_rows_parts(shape.batch);
    state.coefficients = at::empty({2 * shape.batch * groups}, rstd.options());
    state.partials = at::empty({2 * state.parts * shape.channels}, rstd.options().dtype(at::kDouble));
  }
  return state;
}

namespace {
std::atomic<int64_t> g_workspace_bytes{0};
}  // namespace

void set_group_workspace_bytes(int64_t bytes) { g_workspace_bytes.store(bytes); }
void add_group_workspace_bytes(int64_t bytes) { g_workspace_bytes.fetch_add(bytes); }
int64_t group_norm_workspace_bytes() { return g_workspace_bytes.load(); }

GroupWorkspace group_workspace(int64_t arrays, int64_t batch, int64_t channels, const Tensor& like,
                               at::ScalarType acc) {
  const int64_t per_array = batch * channels;
  const auto options = like.options().dtype(acc);
  const bool split = like.is_cpu() && arrays * per_array * c10::elementSize(acc) > kSplitWorkspaceBytes;
  GroupWorkspace workspace{{}, per_array};
  for (int64_t i = 0; i < (split ? arrays : 1); ++i)
    workspace.parts.push_back(at::empty({split ? per_array : arrays * per_array}, options));
  return workspace;
}

}  // namespace pyfusedbn
