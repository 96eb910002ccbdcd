%% @doc MQTT topic rules (MQTT 3.1.1 and 5.0, section 4.7), pure and local.
%%
%% `+' and `#' take whole levels, `#' only last and also matching the parent
%% level (`a/#' matches `a'), `+' matches an empty level, filters starting
%% with a wildcard do not match topics starting with `$', names hold no
%% wildcards, no NUL, 1 to 65535 bytes of UTF-8, and nothing is normalised.
-module(emqx_redis_topic).

-export([validate/2, match/2]).

%% @doc `ok', or `{error, Reason}' with Reason one of `empty', `too_long',
%% `invalid_utf8', `contains_nul', `wildcard_in_name',
%% `misplaced_multi_level_wildcard', `misplaced_single_level_wildcard', `not_a_binary'.
-spec validate(name | filter, term()) -> ok | {error, atom()}.
validate(Kind, Topic) when (Kind =:= name orelse Kind =:= filter), is_binary(Topic) ->
    emqx_redis_storage_nif:topic_validate(Kind, Topic);
validate(_Kind, _Topic) ->
    {error, not_a_binary}.

%% @doc Does the topic name match the filter? False if either is invalid.
-spec match(binary(), binary()) -> boolean().
match(Name, Filter) when is_binary(Name), is_binary(Filter) ->
    emqx_redis_storage_nif:topic_match(Name, Filter);
match(_Name, _Filter) ->
    false.
