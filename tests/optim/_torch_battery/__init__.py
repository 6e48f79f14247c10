"""PyTorch's optimizer test battery (``TestOptimRenewed``), ported to pytest for ``steepest``.

The tests in ``tests/optim/test_torch_battery.py`` and the helpers in this package follow the
checks of PyTorch's ``test/test_optim.py``, class ``TestOptimRenewed`` (github.com/pytorch/pytorch,
a late-2024/2025 main-branch version: the one with ``TensorTracker``, named parameters and
``test_save_load_equality_with_weights_only``; the stored copy it was read from did not name its
commit), and the ``OptimizerInfo`` / ``OptimizerInput`` / ``TensorTracker`` records of
``torch/testing/_internal/common_optimizers.py`` as shipped in the torch 2.13.0 wheel (git
cf30153c4c131c8164ee7798e5022d810682e2cb). They are rewritten for pytest rather than copied or
imported: the torch wheel does not ship ``test/test_optim.py``, and importing
``torch.testing._internal`` needs the ``expecttest`` package and unittest's ``TestCase``. The
test names are torch's; each docstring says where a test departs from torch's.

PyTorch's licence (BSD-3-Clause) applies to the ported test logic:

    From PyTorch:
    Copyright (c) 2016-     Facebook, Inc            (Adam Paszke)
    Copyright (c) 2014-     Facebook, Inc            (Soumith Chintala)
    (and the other copyright holders listed in PyTorch's LICENSE file)
    All rights reserved.

    Redistribution and use in source and binary forms, with or without modification, are
    permitted provided that the following conditions are met:

    1. Redistributions of source code must retain the above copyright notice, this list of
       conditions and the following disclaimer.
    2. Redistributions in binary form must reproduce the above copyright notice, this list of
       conditions and the following disclaimer in the documentation and/or other materials
       provided with the distribution.
    3. Neither the names of Facebook, Deepmind Technologies, NYU, NEC Laboratories America and
       IDIAP Research Institute nor the names of its contributors may be used to endorse or
       promote products derived from this software without specific prior written permission.

    THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS
    OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
    MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE
    COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
    EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
    SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
    HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR
    TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
    SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
