package authn

import (
	"strings"

	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// checkPolicy applies a key store's secondary authorization to a request.
// It returns the rule that denied it, or ok. Empty lists allow anything.
func checkPolicy(p registry.Policy, md xks.RequestMetadata) (rule string, ok bool) {
	if len(p.AllowedPrincipals) > 0 && !matchAny(p.AllowedPrincipals, md.AWSPrincipalArn) {
		return "allowed_principals", false
	}
	if len(p.AllowedVPCs) > 0 && !matchAny(p.AllowedVPCs, md.AWSSourceVpc) {
		return "allowed_vpcs", false
	}
	if len(p.AllowedVPCEs) > 0 && !matchAny(p.AllowedVPCEs, md.AWSSourceVpce) {
		return "allowed_vpces", false
	}
	return "", true
}

// matchAny matches v exactly, or by prefix for patterns ending in "*". An
// empty value never matches a non-empty list.
func matchAny(patterns []string, v string) bool {
	if v == "" {
		return false
	}
	for _, p := range patterns {
		if prefix, wild := strings.CutSuffix(p, "*"); wild {
			if strings.HasPrefix(v, prefix) {
				return true
			}
		} else if p == v {
			return true
		}
	}
	return false
}
