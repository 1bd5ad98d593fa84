"""Find the conda environments and venvs that [kernels] environments names, and their kernels.

Standard library only. Runs as the lab user: inside JupyterLab (as `jlservice_environments`,
for jlservice's kernelspec manager) and in `jlservice doctor` (as `python -I -S
environments.py PATTERN…`, which prints what it found as JSON). What a pattern names is
envglob's, what one prefix holds envprefix's, the names kernels are listed under envnames';
in JupyterLab's private dir they are `jlservice_envglob` and so on.

A Finder keeps what it found and, when asked again, only stat()s the directories that
decide it (those a glob listed, and per environment its top, bin/, site-packages/,
conda-meta/ and kernel directories): an environment created, removed or changed is seen at
the next listing, and an unchanged machine costs a few hundred stat() calls.
"""

from __future__ import annotations

import json
import os
import sys

if __package__:  # jlservice.inlab.environments (the tests)
    from . import envglob, envnames, envprefix
elif __name__ == "__main__":  # the doctor: python -I -S …/inlab/environments.py (no sys.path[0])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import envglob
    import envnames
    import envprefix
else:  # jlservice_environments, in JupyterLab's private dir
    import jlservice_envglob as envglob
    import jlservice_envnames as envnames
    import jlservice_envprefix as envprefix


class Finder:
    """The environments of `patterns`, found again only where a watched directory changed.

    `skip`: prefixes whose kernels JupyterLab lists anyway (its own environment). `log`:
    called with one line per problem, when an environment is (re)inspected.
    """

    def __init__(self, patterns, skip=(), log=None):
        self.patterns = list(patterns)
        self.skip = {os.path.realpath(p) for p in skip}
        self.log = log or (lambda line: None)
        self._glob_stamps = None  # what decided the list of candidates
        self._candidates = []
        self._inspected = {}  # prefix: (Environment or None, stamps)
        self._environments = []
        self.generation = 0  # +1 whenever what find() returns changed
        self.at = None  # the path being looked at (the one that hangs, if find() does)

    def _note(self, path):
        self.at = path

    def find(self):
        """The environments found, each with its kernels and problems."""
        changed = False
        if self._glob_stamps is None or not envglob.fresh(self._glob_stamps, self._note):
            self._candidates, self._glob_stamps = self._expand()
            changed = True
        inspected = {}
        for prefix in self._candidates:
            known = self._inspected.get(prefix)
            if known is None or not envglob.fresh(known[1], self._note):
                self.at = prefix
                env, paths = envprefix.inspect(prefix)
                known = (env, envglob.stamps(paths))
                changed = True
                for problem in env.problems if env else ():
                    self.log(envnames.printable(f"environment {prefix}: {problem}"))
            inspected[prefix] = known
        if changed or inspected.keys() != self._inspected.keys():
            self._inspected = inspected
            self._environments = [e for e, _ in inspected.values() if e is not None]
            self.generation += 1
        return self._environments

    def _expand(self):
        candidates, listed = {}, []
        for pattern in self.patterns:
            found, decided = envglob.expand(pattern, self._note, self._say)
            listed.extend(decided)
            for prefix in found:
                self.at = prefix
                if prefix not in candidates and os.path.realpath(prefix) not in self.skip:
                    candidates[prefix] = None
        if len(candidates) > envglob.MAX_MATCHES:
            self.log(f"more than {envglob.MAX_MATCHES} environments; the first are used")
        return list(candidates)[: envglob.MAX_MATCHES], envglob.stamps(dict.fromkeys(listed))

    def _say(self, line):
        self.log(envnames.printable(line))


def main(argv):
    """`python -I -S environments.py [--skip PREFIX]… PATTERN…` (jlservice doctor): what
    the lab user finds, as JSON."""
    skip = []
    while len(argv) >= 2 and argv[0] == "--skip":
        skip.append(argv[1])
        argv = argv[2:]
    environments = Finder(argv, skip=skip).find()
    names = {id(kernel): name for name, (_, kernel) in envnames.named(environments)[0].items()}
    json.dump([e.as_dict(names) for e in environments], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
