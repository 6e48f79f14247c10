"""Geometry diagnostics: does sign descent (or l_p / block-normalized descent) suit a problem?

Dense matrices (:mod:`steepest.geometry.dense`): the exact l_inf smoothness
``||H||_{inf,1}`` [BPL20, Eq. 19], its bounds (Prop. 4-7, Eq. 22-23, 80), ``L_sep`` (SDP),
gradient density and the predicted advantage of sign descent (Eq. 30-31), rotated quadratics
(App. D.2). Real models (:mod:`steepest.geometry.models`): Hessian-vector products, top
eigenvalues, Hutchinson estimates, certified lower bounds on ``||H||_{inf,1}``, and the
``steepest geometry`` report (:mod:`steepest.geometry.report`; the command line itself:
:mod:`steepest.geometry.command`).
"""

from steepest.geometry.dense import (
    Inf1Result,
    density,
    entrywise_bound,
    entrywise_bound_block,
    heuristic_norm_inf1,
    heuristic_norm_inf1_block,
    l2_smoothness,
    lower_bound_eq22,
    norm_inf1,
    norm_inf1_bruteforce,
    predicted_advantage,
    prop4_bound,
    prop5_bound,
    prop7_bound,
    rho_diag,
    rho_diag_block,
    rotated_quadratic,
    sdp_bound,
    sep_smoothness,
    solve_norm_inf1,
)
from steepest.geometry.models import (
    HessianOperator,
    density_along_training,
    diagonal_concentration,
    gradient_density,
    hutchinson_diagonal,
    hutchinson_trace,
    hvp,
    inf1_lower_bound,
    l2_smoothness_model,
    slq_trace,
    top_eigenvalue,
    top_eigenvalues,
)
from steepest.geometry.report import GeometryReport, geometry_report

__all__ = [
    "GeometryReport",
    "HessianOperator",
    "Inf1Result",
    "density",
    "density_along_training",
    "diagonal_concentration",
    "entrywise_bound",
    "entrywise_bound_block",
    "geometry_report",
    "gradient_density",
    "heuristic_norm_inf1",
    "heuristic_norm_inf1_block",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hvp",
    "inf1_lower_bound",
    "l2_smoothness",
    "l2_smoothness_model",
    "lower_bound_eq22",
    "norm_inf1",
    "norm_inf1_bruteforce",
    "predicted_advantage",
    "prop4_bound",
    "prop5_bound",
    "prop7_bound",
    "rho_diag",
    "rho_diag_block",
    "rotated_quadratic",
    "sdp_bound",
    "sep_smoothness",
    "slq_trace",
    "solve_norm_inf1",
    "top_eigenvalue",
    "top_eigenvalues",
]
