%% The most bytes one request may carry into the NIF, which copies them on
%% the calling scheduler: 8 MiB, about a millisecond. Larger input is split
%% (routes) or refused (`too_large', `batch_too_large').
-define(MAX_REQUEST_BYTES, 8388608).
