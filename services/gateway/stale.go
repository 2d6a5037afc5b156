package gateway

import (
	"errors"

	"github.com/sovkeys/sovkeys/shared"
)

// fresh refuses requests while the gateway cannot show that its key
// store and kill switch mirrors are current (registry.Cache.Fresh).
func (s *Service) fresh() error {
	err := errors.Join(s.keystores.Fresh(), s.kill.Fresh())
	if err != nil {
		return shared.NewError(shared.CodeDependencyTimeout, "configuration state is not current; retry later")
	}
	return nil
}
