%% @doc The `redis.url' setting: a Redis address as a URL, turned into the
%% `redis' fields it stands for. Pure, no I/O.
%%
%% ```
%% redis://[user[:password]@]host[:port][/db]            single (port 6379)
%% rediss://...                                          the same over TLS
%% redis+sentinel://[user[:password]@]host[:port],.../master[/db]
%%                                                       sentinels (port 26379)
%% redis+cluster://[user[:password]@]host[:port],...     cluster seed nodes
%% rediss+sentinel://..., rediss+cluster://...           the same over TLS
%% unix://[user[:password]@]/path/redis.sock[?db=N]      a local unix socket
%% '''
%% A host is a name, an IPv4 address or an IPv6 address in brackets
%% (`redis://[::1]:6379'); `servers' takes hosts the same way (host_port/2).
%% The user and password are the data nodes' (a Sentinel's own are
%% `sentinel_username'/`sentinel_password'); characters such as `@', `:',
%% `/', `,' in them are percent-encoded. An error says what is wrong and never
%% repeats the URL, which may hold the password.
-module(emqx_redis_storage_url).

-export([parse/1, host_port/2, address/1]).

-type fields() :: #{atom() => term()}.

%% @doc The `redis' fields the URL sets: `redis_type', `servers', `tls'
%% (true for the rediss schemes) and, when the URL has them, `database',
%% `sentinel', `username', `password'.
-spec parse(binary()) -> {ok, fields()} | {error, binary()}.
parse(Url) when is_binary(Url) ->
    try
        {ok, fields(Url)}
    catch
        throw:{bad_url, Why} -> {error, Why}
    end.

fields(Url) ->
    {Scheme, Rest} =
        case binary:split(Url, <<"://">>) of
            [S, R] -> {string:lowercase(S), R};
            _ -> bad(<<"a URL such as redis://host:6379/0 (scheme:// missing)">>)
        end,
    case Scheme of
        <<"unix">> -> unix(Rest);
        <<"redis">> -> tcp(single, false, Rest);
        <<"rediss">> -> tcp(single, true, Rest);
        <<"redis+sentinel">> -> tcp(sentinel, false, Rest);
        <<"rediss+sentinel">> -> tcp(sentinel, true, Rest);
        <<"redis+cluster">> -> tcp(cluster, false, Rest);
        <<"rediss+cluster">> -> tcp(cluster, true, Rest);
        _ -> bad(<<"one of the schemes redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster, unix">>)
    end.

%% unix://[user[:password]@]/path[?db=N]
unix(Rest) ->
    {Before, Query} = split_query(Rest),
    {Auth, Path} =
        case binary:match(Before, <<"/">>) of
            {At, _} -> split_at(Before, At);
            nomatch -> bad(<<"unix:///absolute/path/to/redis.sock">>)
        end,
    Credentials =
        case byte_size(Auth) of
            0 -> #{};
            Size when binary_part(Auth, Size - 1, 1) =:= <<"@">> -> credentials(binary_part(Auth, 0, Size - 1));
            _ -> bad(<<"unix://[user[:password]@]/path: nothing but credentials before the path">>)
        end,
    Path =:= <<"/">> andalso bad(<<"a socket path after unix://">>),
    binary:match(Path, [<<",">>, <<":">>]) =:= nomatch orelse bad(<<"a socket path without , or :">>),
    Db =
        case Query of
            none -> #{};
            <<"db=", N/binary>> -> #{database => database(N)};
            _ -> bad(<<"no query, or ?db=N">>)
        end,
    maps:merge(Credentials#{redis_type => single, servers => [decode(Path)], tls => false}, Db).

tcp(Type, Tls, Rest) ->
    {Before, Query} = split_query(Rest),
    Query =:= none orelse bad(<<"no query (?...) in a redis URL">>),
    {Authority, Path} =
        case binary:match(Before, <<"/">>) of
            {At, _} -> split_at(Before, At);
            nomatch -> {Before, <<>>}
        end,
    {Credentials, Hosts} =
        case binary:matches(Authority, <<"@">>) of
            [] ->
                {#{}, Authority};
            Ats ->
                {Last, _} = lists:last(Ats),
                {Info, <<"@", H/binary>>} = split_at(Authority, Last),
                {credentials(Info), H}
        end,
    Servers = servers(Type, Hosts),
    maps:merge(
        Credentials#{redis_type => Type, servers => Servers, tls => Tls},
        path(Type, binary:split(Path, <<"/">>, [global]))
    ).

%% What follows the hosts: the database, or the master name then the database.
path(single, Parts) ->
    case Parts of
        [<<>>] -> #{};
        [<<>>, <<>>] -> #{};
        [<<>>, Db] -> #{database => database(Db)};
        _ -> bad(<<"redis://host[:port][/db]">>)
    end;
path(cluster, Parts) ->
    case Parts of
        [<<>>] -> #{};
        [<<>>, Db] when Db =:= <<>>; Db =:= <<"0">> -> #{};
        _ -> bad(<<"redis+cluster://host[:port],host[:port]... (a cluster has only database 0)">>)
    end;
path(sentinel, Parts) ->
    case Parts of
        [<<>>, Master] when Master =/= <<>> -> #{sentinel => decode(Master)};
        [<<>>, Master, Db] when Master =/= <<>> ->
            #{sentinel => decode(Master), database => database(Db)};
        _ -> bad(<<"redis+sentinel://host[:port],.../master_name[/db]">>)
    end.

servers(Type, Hosts) ->
    DefaultPort =
        case Type of
            sentinel -> <<"26379">>;
            _ -> <<"6379">>
        end,
    Entries = binary:split(Hosts, <<",">>, [global]),
    Type =:= single andalso length(Entries) > 1 andalso
        bad(<<"one host in redis://; redis+sentinel:// or redis+cluster:// for several">>),
    [server(E, DefaultPort) || E <- Entries].

server(Entry, DefaultPort) ->
    case host_port(Entry, DefaultPort) of
        {ok, HostPort} -> address(HostPort);
        error -> bad(<<"host[:port] for each host (a name, an IPv4 address or an IPv6 address in brackets), "
                       "with a port from 1 to 65535">>)
    end.

%% @doc `host[:port]' (a name, an IPv4 address, or an IPv6 address in
%% brackets: `[::1]:6379') as `{Host, Port}', the brackets dropped.
-spec host_port(binary(), binary()) -> {ok, {binary(), inet:port_number()}} | error.
host_port(<<"[", Rest/binary>>, DefaultPort) ->
    case binary:split(Rest, <<"]">>) of
        [Ip, <<>>] -> ipv6_port(Ip, DefaultPort);
        [Ip, <<":", Port/binary>>] -> ipv6_port(Ip, Port);
        _ -> error
    end;
host_port(Entry, DefaultPort) ->
    case binary:split(Entry, <<":">>, [global]) of
        [Host] -> checked(Host, DefaultPort);
        [Host, Port] -> checked(Host, Port);
        _ -> error
    end.

%% No zone (`fe80::1%eth0'): the address is dialled as it is written.
ipv6_port(Ip, Port) ->
    case binary:match(Ip, <<"%">>) =:= nomatch andalso inet:parse_ipv6strict_address(binary_to_list(Ip)) of
        {ok, _} -> checked(Ip, Port);
        _ -> error
    end.

checked(<<>>, _Port) ->
    error;
checked(Host, Port) ->
    case binary:match(Host, [<<"[">>, <<"]">>]) of
        nomatch ->
            case catch binary_to_integer(Port) of
                N when is_integer(N), N > 0, N < 65536 -> {ok, {Host, N}};
                _ -> error
            end;
        _ ->
            error
    end.

%% @doc `host:port' as the `servers' field takes it and as logs and status
%% show it: an IPv6 address in brackets; a unix socket (port 0) as its path.
-spec address({binary(), inet:port_number()}) -> binary().
address({Socket, 0}) -> Socket;
address({Host, Port}) ->
    case binary:match(Host, <<":">>) of
        nomatch -> <<Host/binary, ":", (integer_to_binary(Port))/binary>>;
        _ -> <<"[", Host/binary, "]:", (integer_to_binary(Port))/binary>>
    end.

credentials(Info) ->
    {User, Password} =
        case binary:split(Info, <<":">>) of
            [U] -> {U, <<>>};
            [U, P] -> {U, P}
        end,
    maps:from_list(
        [{username, decode(User)} || User =/= <<>>] ++ [{password, decode(Password)} || Password =/= <<>>]
    ).

%% Percent-decoded; a bad escape is an error that does not show the text
%% (uri_string may return or throw its error, which holds the text).
decode(Text) ->
    try uri_string:percent_decode(Text) of
        Bin when is_binary(Bin) -> Bin;
        _ -> bad(<<"valid percent escapes (%XX)">>)
    catch
        _:_ -> bad(<<"valid percent escapes (%XX)">>)
    end.

database(Text) ->
    case catch binary_to_integer(Text) of
        N when is_integer(N), N >= 0, N =< 65535 -> N;
        _ -> bad(<<"a database number from 0 to 65535">>)
    end.

split_query(Rest) ->
    case binary:split(Rest, <<"?">>) of
        [Before, Query] -> {Before, Query};
        [Before] -> {Before, none}
    end.

split_at(Bin, At) ->
    <<Before:At/binary, After/binary>> = Bin,
    {Before, After}.

-spec bad(binary()) -> no_return().
bad(Why) -> throw({bad_url, Why}).
