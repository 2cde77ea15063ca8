"""Policy semantics over the mapping's records (draft §3.5): scopes, and the reference verdict. Pure.

The rules themselves are records (`records.Rule`, `records.PolicySet`, one key /policy): the intent's
rules resolved to prefixes by `intent.compile`. What one VM port enforces is `nve.portfilter`.

Semantics (the intent's `policies:` and each tenant's `default_policy`):
  * rules in order, first match wins; an endpoint is a CUG (its subnet), a VM (its addresses), a
    prefix or anything;
  * inside one CUG traffic is allowed unless a rule says otherwise; across CUGs of a tenant, the
    tenant's default applies when no rule matches; different tenants never reach each other (their
    VRFs are separate, no rule is needed for that);
  * a rule belongs to a scope: the tenant of its CUG/VM endpoints (an L2-only CUG is a scope of its
    own), its `tenant:`, or every scope when its endpoints are only prefixes or `any`.
"""

from __future__ import annotations

import ipaddress

from roamnet.mapping.records import ALLOW, ANY_PROTO, PolicySet, Segment


def scope_of(segment: Segment) -> str:
    """A routed CUG's scope is its tenant; an L2-only CUG is a scope of its own."""
    return segment.tenant or f"cug:{segment.name}"


def held(prefixes: tuple[str, ...] | None, ips: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses of `ips` inside `prefixes` (None: anything)."""
    if prefixes is None:
        return ips
    nets = [ipaddress.ip_network(p) for p in prefixes]
    return tuple(ip for ip in ips if any(ipaddress.ip_address(ip) in n for n in nets))


def holds(prefixes: tuple[str, ...] | None, ips: tuple[str, ...]) -> bool:
    return bool(held(prefixes, ips))


def allowed(policy: PolicySet, segments: dict[int, Segment], src: tuple[int, str], dst: tuple[int, str],
            proto: str, port: int) -> bool:
    """Whether a new flow from `src` = (VNI, IP) to `dst` = (VNI, IP) passes: the reference semantics
    the filters implement (tests compute the expected reachability matrix with it)."""
    s_seg, d_seg = segments.get(src[0]), segments.get(dst[0])
    if s_seg is None or d_seg is None or scope_of(s_seg) != scope_of(d_seg):
        return False
    if src[0] != dst[0] and not (s_seg.tenant and s_seg.gateway and d_seg.gateway):
        return False  # L2-only CUGs are not routed anywhere
    for r in policy.rules:
        if r.scopes is not None and scope_of(s_seg) not in r.scopes:
            continue
        if (holds(r.src, (src[1],)) and holds(r.dst, (dst[1],))
                and r.proto in (ANY_PROTO, proto) and (not r.ports or port in r.ports)):
            return r.action == ALLOW
    if src[0] == dst[0]:
        return True
    return policy.defaults.get(s_seg.tenant, ALLOW) == ALLOW
