package authn

import (
	"errors"

	"github.com/sovkeys/sovkeys/shared"
)

// fresh refuses requests while authn cannot show that its key store, key,
// tenant and kill switch mirrors are current (registry.Cache.Fresh): a
// released switch, a disabled key or a retired credential is never assumed
// from a snapshot that may be old. The caches log the cause.
func (s *Service) fresh() error {
	err := errors.Join(s.keystores.Fresh(), s.keys.Fresh(), s.tenants.Fresh(), s.kill.Fresh())
	if err != nil {
		return shared.NewError(shared.CodeDependencyTimeout, "configuration state is not current; retry later")
	}
	return nil
}
