package gateway

import (
	"net/http"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// vsStatus is the one table from error codes to HTTP statuses of the
// volume-secret API, whose errors are {"message": "..."}.
var vsStatus = map[shared.Code]int{
	shared.CodeValidation:           http.StatusBadRequest,
	shared.CodeInvalidCiphertext:    http.StatusBadRequest,
	shared.CodeInvalidKeyUsage:      http.StatusBadRequest,
	shared.CodeInvalidState:         http.StatusConflict,
	shared.CodeAuthenticationFailed: http.StatusUnauthorized,
	shared.CodeAccessDenied:         http.StatusForbidden,
	shared.CodeKeyNotFound:          http.StatusNotFound,
	shared.CodeInvalidURIPath:       http.StatusNotFound,
	shared.CodeMethodNotAllowed:     http.StatusMethodNotAllowed,
	shared.CodeThrottling:           http.StatusTooManyRequests,
	shared.CodeUnsupportedOperation: http.StatusNotImplemented,
	shared.CodeDependencyTimeout:    http.StatusServiceUnavailable,
	shared.CodeInternal:             http.StatusInternalServerError,
}

// writeVSError answers a volume-secret call with err's status and message.
func writeVSError(w http.ResponseWriter, err error) {
	status, ok := vsStatus[shared.CodeOf(err)]
	noteError(w, shared.CodeOf(err), "")
	if !ok {
		status = http.StatusInternalServerError
	}
	if status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", http.MethodPost)
	}
	writeJSON(w, status, vs.ErrorResponse{Message: xksErrorMessage(shared.MessageOf(err))})
}
