%% `redis.url': the parsing table (what each form stands for, what is
%% refused and why), then every form connecting for real: single with an ACL
%% user and a database, TLS, Sentinel, Cluster and a unix socket, and the
%% three over IPv6 (`[::1]'); a password in a URL never shown.
-module(emqx_redis_url_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(PASSWORD, "url-s3cret-pw").

all() ->
    [
        url_forms_table,
        bad_urls_are_refused,
        single_with_acl_user_and_database,
        unix_socket,
        tls_url,
        sentinel_url,
        cluster_url,
        tls_sentinel_and_cluster_urls,
        ipv6_single,
        ipv6_sentinel,
        ipv6_cluster,
        password_in_url_never_shown
    ].

init_per_suite(Config) ->
    ok = emqx_redis_storage:stop(),
    Config.

end_per_suite(_Config) ->
    ok.

end_per_testcase(_Case, _Config) ->
    ok = emqx_redis_storage:stop().

%% The normalised `redis' section of a config with this `redis' map.
redis(Redis) ->
    {ok, #{redis := Normalised}} = emqx_redis_storage_config:parse(#{redis => Redis}),
    Normalised.

reveal(undefined) -> undefined;
reveal(Fun) -> Fun().

%%--------------------------------------------------------------------

url_forms_table(_Config) ->
    Table = [
        {<<"redis://localhost">>, #{redis_type => single, servers => [{<<"localhost">>, 6379}], database => 0}},
        {<<"redis://10.0.0.1:7000/3">>, #{servers => [{<<"10.0.0.1">>, 7000}], database => 3}},
        {<<"REDIS://h:1/">>, #{servers => [{<<"h">>, 1}], database => 0}},
        {<<"redis://app:p%40ss%3Aw%2Frd@h/2">>,
            #{username => <<"app">>, password => <<"p@ss:w/rd">>, database => 2}},
        {<<"redis://:only-pw@h">>, #{username => undefined, password => <<"only-pw">>}},
        {<<"redis://user@h">>, #{username => <<"user">>, password => undefined}},
        {<<"rediss://h:6380">>, #{servers => [{<<"h">>, 6380}], ssl => #{enable => true}}},
        {<<"redis+sentinel://s1,s2:26380/mymaster">>,
            #{redis_type => sentinel, sentinel => <<"mymaster">>, servers => [{<<"s1">>, 26379}, {<<"s2">>, 26380}]}},
        {<<"redis+sentinel://u:pw@s1/mymaster/5">>,
            #{sentinel => <<"mymaster">>, database => 5, username => <<"u">>, password => <<"pw">>}},
        {<<"rediss+sentinel://s1/m">>, #{redis_type => sentinel, ssl => #{enable => true}}},
        {<<"redis+cluster://n1:7000,n2:7001,n3">>,
            #{redis_type => cluster, servers => [{<<"n1">>, 7000}, {<<"n2">>, 7001}, {<<"n3">>, 6379}]}},
        {<<"rediss+cluster://:pw@n1:7000/">>, #{redis_type => cluster, password => <<"pw">>, ssl => #{enable => true}}},
        {<<"unix:///var/run/redis/redis.sock">>,
            #{redis_type => single, servers => [{<<"/var/run/redis/redis.sock">>, 0}], database => 0}},
        {<<"unix:///tmp/r.sock?db=7">>, #{servers => [{<<"/tmp/r.sock">>, 0}], database => 7}},
        {<<"unix://app:pw@/tmp/r.sock">>, #{username => <<"app">>, password => <<"pw">>}},
        %% IPv6 addresses in brackets, kept without them
        {<<"redis://[::1]:7000/2">>, #{servers => [{<<"::1">>, 7000}], database => 2}},
        {<<"redis://u:pw@[2001:db8::5]">>, #{servers => [{<<"2001:db8::5">>, 6379}], username => <<"u">>}},
        {<<"redis+sentinel://[::1]:26380,[fd00::2]/m">>,
            #{sentinel => <<"m">>, servers => [{<<"::1">>, 26380}, {<<"fd00::2">>, 26379}]}},
        {<<"redis+cluster://[::ffff:10.0.0.1]:7000,h:7001">>,
            #{servers => [{<<"::ffff:10.0.0.1">>, 7000}, {<<"h">>, 7001}]}}
    ],
    [check_form(Url, Expected) || {Url, Expected} <- Table],
    %% binary keys (HOCON), a list URL; fields the URL leaves out may be set
    %% beside it, and the ssl settings apply to a rediss URL
    ?assertMatch(#{database := 4, servers := [{<<"h">>, 1}]}, redis(#{<<"url">> => "redis://h:1", <<"database">> => 4})),
    ?assertEqual(<<"pw">>, reveal(maps:get(password, redis(#{url => <<"redis://h">>, password => <<"pw">>})))),
    ?assertMatch(
        #{ssl := #{enable := true, verify := verify_none}},
        redis(#{url => <<"rediss://h">>, ssl => #{verify => verify_none}})
    ),
    %% a unix socket path in servers
    ?assertMatch(#{servers := [{<<"/tmp/r.sock">>, 0}]}, redis(#{servers => <<"/tmp/r.sock">>})),
    %% IPv6 addresses in servers, in brackets
    ?assertMatch(
        #{servers := [{<<"::1">>, 7000}, {<<"fd00::2">>, 6379}, {<<"h">>, 1}]},
        redis(#{servers => <<"[::1]:7000,[fd00::2],h:1">>})
    ),
    ?assertMatch(#{servers := [{<<"::1">>, 6379}]}, redis(#{servers => ["[::1]"]})).

check_form(Url, Expected) ->
    Got = redis(#{url => Url}),
    maps:foreach(
        fun
            (ssl, #{enable := Enable}) -> ?assertEqual(Enable, maps:get(enable, maps:get(ssl, Got)), Url);
            (password, Password) -> ?assertEqual(Password, reveal(maps:get(password, Got)), Url);
            (Key, Value) -> ?assertEqual(Value, maps:get(Key, Got), Url)
        end,
        Expected
    ).

bad_urls_are_refused(_Config) ->
    Url = <<"redis.url">>,
    Table = [
        {#{url => <<"localhost:6379">>}, Url},
        {#{url => <<"http://h">>}, Url},
        {#{url => <<"redis://">>}, Url},
        {#{url => <<"redis://h:0">>}, Url},
        {#{url => <<"redis://h:99999">>}, Url},
        {#{url => <<"redis://h:port">>}, Url},
        {#{url => <<"redis://h/db">>}, Url},
        {#{url => <<"redis://h/70000">>}, Url},
        {#{url => <<"redis://h/1/2">>}, Url},
        {#{url => <<"redis://h?db=1">>}, Url},
        {#{url => <<"redis://a,b">>}, Url},
        %% an IPv6 address only in brackets, and a valid one
        {#{url => <<"redis://::1:6379">>}, Url},
        {#{url => <<"redis://[::1">>}, Url},
        {#{url => <<"redis://[::1]6379">>}, Url},
        {#{url => <<"redis://[::1]:">>}, Url},
        {#{url => <<"redis://[zz::1]:6379">>}, Url},
        {#{url => <<"redis://[127.0.0.1]:6379">>}, Url},
        {#{url => <<"redis://[]:6379">>}, Url},
        {#{url => <<"redis+cluster://[::1]:7000,[::2">>}, Url},
        {#{servers => <<"::1:6379">>}, <<"redis.servers">>},
        {#{servers => <<"[::1]:0">>}, <<"redis.servers">>},
        {#{servers => <<"[fe80::1%eth0]:6379">>}, <<"redis.servers">>},
        {#{servers => <<"[::1]]:6379">>}, <<"redis.servers">>},
        {#{url => <<"redis://u:bad%zz@h">>}, Url},
        {#{url => <<"redis+sentinel://s1">>}, Url},
        {#{url => <<"redis+sentinel://s1/m/x">>}, Url},
        {#{url => <<"redis+cluster://n1/2">>}, Url},
        {#{url => <<"unix://relative.sock">>}, Url},
        {#{url => <<"unix:///">>}, Url},
        {#{url => <<"unix:///tmp/r.sock?database=1">>}, Url},
        {#{url => <<"unix://host/tmp/r.sock">>}, Url},
        {#{url => 42}, Url},
        %% set twice: by the URL and beside it
        {#{url => <<"redis://h">>, servers => <<"h:1">>}, Url},
        {#{url => <<"redis://h/1">>, database => 2}, Url},
        {#{url => <<"redis+cluster://h">>, redis_type => single}, Url},
        {#{url => <<"redis://:pw@h">>, password => <<"pw">>}, Url},
        {#{url => <<"rediss://h">>, ssl => #{enable => false}}, Url},
        %% a unix socket only alone, plain, and single
        {#{url => <<"unix:///tmp/r.sock">>, ssl => #{enable => true}}, <<"redis.ssl.enable">>},
        {#{servers => <<"/tmp/r.sock,h:1">>}, <<"redis.servers">>},
        {#{servers => <<"/tmp/r.sock">>, redis_type => cluster}, <<"redis.servers">>}
    ],
    lists:foreach(
        fun({Redis, Field}) ->
            case emqx_redis_storage:start(#{redis => Redis}) of
                {error, {invalid_config, Field, Why}} when is_binary(Why), Why =/= <<>> -> ok;
                Other -> ct:fail({expected_invalid, Field, Redis, Other})
            end
        end,
        Table
    ).

single_with_acl_user_and_database(_Config) ->
    Redis = redis_test_server:start(#{conf => ["user app on >" ?PASSWORD " ~* &* +@all"]}),
    try
        Url = iolist_to_binary(["redis://app:" ?PASSWORD "@", redis_test_server:address(Redis), "/3"]),
        ok = emqx_redis_storage:start(#{redis => #{url => Url}}),
        ?assertEqual({ok, <<"app">>}, emqx_redis_storage:q([<<"ACL">>, <<"WHOAMI">>])),
        {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, <<"where">>, <<"db3">>]),
        ?assertEqual("db3", redis_test_server:cmd(Redis, ["-n", "3", "GET", "where"])),
        ?assertMatch(#{mode := single, database := 3}, emqx_redis_storage:status()),
        ok = emqx_redis_storage:stop(),
        ?assertMatch(
            {error, {connection, _}},
            emqx_redis_storage:start(#{redis => #{url => binary:replace(Url, <<?PASSWORD>>, <<"wrong">>)}})
        )
    after
        redis_test_server:stop(Redis)
    end.

unix_socket(_Config) ->
    Redis = redis_test_server:start(#{unixsocket => true, conf => ["requirepass " ?PASSWORD]}),
    try
        Socket = list_to_binary(redis_test_server:socket(Redis)),
        ok = emqx_redis_storage:start(#{redis => #{url => <<"unix://:" ?PASSWORD "@", Socket/binary, "?db=2">>}}),
        {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, <<"via">>, <<"socket">>]),
        ?assertEqual("socket", redis_test_server:cmd(Redis, ["-a", ?PASSWORD, "--no-auth-warning", "-n", "2", "GET", "via"])),
        ?assertMatch(#{servers := [Socket], connected := true, healthy := true}, emqx_redis_storage:status()),
        %% the API over the socket
        ok = emqx_redis_session:save_session(<<"c1">>, #{s => 1}),
        ?assertEqual({ok, #{s => 1}}, emqx_redis_session:load_session(<<"c1">>)),
        %% the socket path in servers, the password beside it
        ok = emqx_redis_storage:stop(),
        ok = emqx_redis_storage:start(#{redis => #{servers => Socket, password => <<?PASSWORD>>, database => 2}}),
        ?assertEqual({ok, <<"socket">>}, emqx_redis_storage:q([<<"GET">>, <<"via">>])),
        %% restarted: the socket is dialled again
        redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q([<<"PING">>]) =:= {ok, <<"PONG">>} end, 10000),
        ok = emqx_redis_storage:stop(),
        ?assertMatch(
            {error, {connection, _}},
            emqx_redis_storage:start(#{redis => #{url => <<"unix:///nonexistent/redis.sock">>, connect_timeout => 500}})
        )
    after
        redis_test_server:stop(Redis)
    end.

tls_url(_Config) ->
    Certs = redis_test_server:certs(),
    Redis = redis_test_server:start(#{tls => Certs, conf => ["requirepass " ?PASSWORD]}),
    try
        Url = iolist_to_binary(["rediss://:" ?PASSWORD "@", redis_test_server:address(Redis), "/1"]),
        Ssl = #{cacertfile => maps:get(ca, Certs)},
        ok = emqx_redis_storage:start(#{redis => #{url => Url, ssl => Ssl}}),
        ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])),
        ok = emqx_redis_storage:stop(),
        %% the ssl settings apply: without the CA the server is not trusted
        ?assertMatch(
            {error, {connection, _}},
            emqx_redis_storage:start(#{redis => #{url => Url, connect_timeout => 1000}})
        ),
        %% and plain redis:// does not speak TLS to it
        ?assertMatch(
            {error, _},
            emqx_redis_storage:start(#{redis => #{url => binary:replace(Url, <<"rediss">>, <<"redis">>), connect_timeout => 1000}})
        )
    after
        redis_test_server:stop(Redis)
    end.

sentinel_url(_Config) ->
    Sentinel = redis_test_server:start_sentinel(#{
        conf => ["requirepass " ?PASSWORD, "masterauth " ?PASSWORD],
        sentinel_conf => ["sentinel auth-pass mymaster " ?PASSWORD]
    }),
    try
        Hosts = lists:join(",", [redis_test_server:address(S) || S <- maps:get(sentinels, Sentinel)]),
        Url = iolist_to_binary(["redis+sentinel://:" ?PASSWORD "@", Hosts, "/mymaster/1"]),
        ok = emqx_redis_storage:start(#{redis => #{url => Url}}),
        {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, <<"k">>, <<"v">>]),
        Master = maps:get(master, Sentinel),
        ?assertEqual("v", redis_test_server:cmd(Master, ["-a", ?PASSWORD, "--no-auth-warning", "-n", "1", "GET", "k"])),
        ?assertMatch(#{mode := sentinel, database := 1}, emqx_redis_storage:status())
    after
        redis_test_server:stop_sentinel(Sentinel)
    end.

cluster_url(_Config) ->
    Nodes = redis_test_server:start_cluster(#{replicas => 0}),
    try
        Hosts = lists:join(",", [redis_test_server:address(N) || N <- lists:sublist(Nodes, 2)]),
        ok = emqx_redis_storage:start(#{redis => #{url => iolist_to_binary(["redis+cluster://", Hosts])}}),
        ?assertMatch(#{mode := cluster}, emqx_redis_storage:status()),
        [ok = emqx_redis_session:save_session(C, C) || C <- [<<"a">>, <<"b">>, <<"c">>, <<"d">>]],
        ?assertEqual({ok, 4}, emqx_redis_session:count_sessions())
    after
        redis_test_server:stop_cluster(Nodes)
    end.

%% rediss+sentinel and rediss+cluster, with the CA from the ssl settings.
tls_sentinel_and_cluster_urls(_Config) ->
    Certs = redis_test_server:certs(),
    Ssl = #{cacertfile => maps:get(ca, Certs)},
    Hosts = fun(Servers) -> lists:join(",", [redis_test_server:address(S) || S <- Servers]) end,
    Sentinel = redis_test_server:start_sentinel(#{tls => Certs}),
    try
        Url = iolist_to_binary(["rediss+sentinel://", Hosts(maps:get(sentinels, Sentinel)), "/mymaster"]),
        ok = emqx_redis_storage:start(#{redis => #{url => Url, ssl => Ssl}}),
        ok = emqx_redis_session:save_session(<<"s">>, s),
        ?assertEqual({ok, s}, emqx_redis_session:load_session(<<"s">>)),
        ?assertMatch(#{mode := sentinel, healthy := true}, emqx_redis_storage:status()),
        ok = emqx_redis_storage:stop()
    after
        redis_test_server:stop_sentinel(Sentinel)
    end,
    Nodes = redis_test_server:start_cluster(#{tls => Certs, replicas => 0}),
    try
        ok = emqx_redis_storage:start(#{redis => #{url => iolist_to_binary(["rediss+cluster://", Hosts(Nodes)]), ssl => Ssl}}),
        [ok = emqx_redis_session:save_session(C, C) || C <- [<<"a">>, <<"b">>, <<"c">>, <<"d">>]],
        ?assertEqual({ok, 4}, emqx_redis_session:count_sessions()),
        ?assertMatch(#{mode := cluster, healthy := true}, emqx_redis_storage:status())
    after
        redis_test_server:stop_cluster(Nodes)
    end.

%% A Redis on ::1, by URL and by servers: the API works, status shows the
%% address in brackets, a restart is dialled again; over TLS the
%% certificate is checked against the IPv6 address.
ipv6_single(_Config) ->
    Certs = redis_test_server:certs(),
    Tls = redis_test_server:start(#{host => "::1", tls => Certs}),
    try
        Url = <<"rediss://", (redis_test_server:address(Tls))/binary>>,
        ok = emqx_redis_storage:start(#{redis => #{url => Url, ssl => #{cacertfile => maps:get(ca, Certs)}}}),
        ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])),
        ok = emqx_redis_storage:stop()
    after
        redis_test_server:stop(Tls)
    end,
    %% a server whose certificate does not name ::1 is refused
    NameCerts = Certs#{server_cert := maps:get(name_cert, Certs), server_key := maps:get(name_key, Certs)},
    Named = redis_test_server:start(#{host => "::1", tls => NameCerts}),
    try
        NamedUrl = <<"rediss://", (redis_test_server:address(Named))/binary>>,
        ?assertMatch(
            {error, {connection, _}},
            emqx_redis_storage:start(#{redis => #{url => NamedUrl, connect_timeout => 1000,
                ssl => #{cacertfile => maps:get(ca, Certs)}}})
        )
    after
        redis_test_server:stop(Named)
    end,
    Redis = redis_test_server:start(#{host => "::1", conf => ["requirepass " ?PASSWORD]}),
    try
        Address = redis_test_server:address(Redis),
        ?assertMatch(<<"[::1]:", _/binary>>, Address),
        ok = emqx_redis_storage:start(#{redis => #{url => <<"redis://:" ?PASSWORD "@", Address/binary, "/2">>}}),
        ok = emqx_redis_session:save_session(<<"c6">>, #{v => 6}),
        ?assertEqual({ok, #{v => 6}}, emqx_redis_session:load_session(<<"c6">>)),
        ?assertMatch(#{servers := [Address], connected := true, healthy := true, database := 2}, emqx_redis_storage:status()),
        ?assertNotEqual("", redis_test_server:cmd(Redis, ["-a", ?PASSWORD, "--no-auth-warning", "-n", "2", "KEYS", "*c6*"])),
        ok = emqx_redis_storage:stop(),
        ok = emqx_redis_storage:start(#{redis => #{servers => Address, password => <<?PASSWORD>>, database => 2}}),
        ?assertEqual({ok, #{v => 6}}, emqx_redis_session:load_session(<<"c6">>)),
        redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q([<<"PING">>]) =:= {ok, <<"PONG">>} end, 10000)
    after
        redis_test_server:stop(Redis)
    end.

%% Sentinels on ::1 that name an IPv6 master, and a failover to its replica.
ipv6_sentinel(_Config) ->
    Sentinel = redis_test_server:start_sentinel(#{host => "::1"}),
    try
        #{master := Master, replica := Replica, sentinels := Sentinels} = Sentinel,
        Hosts = lists:join(",", [redis_test_server:address(S) || S <- Sentinels]),
        ok = emqx_redis_storage:start(#{redis => #{url => iolist_to_binary(["redis+sentinel://", Hosts, "/mymaster"])}}),
        ok = emqx_redis_session:save_session(<<"s6">>, s6),
        ?assertEqual([redis_test_server:address(Master)], servers_up()),
        %% the session has reached the replica before the master dies
        ok = test_util:wait_until(fun() -> redis_test_server:cmd(Replica, ["KEYS", "*s6*"]) =/= "" end, 10000),
        redis_test_server:kill(Master),
        ok = test_util:wait_until(fun() -> emqx_redis_session:save_session(<<"s6b">>, s6b) =:= ok end, 30000),
        ?assertEqual({ok, s6}, emqx_redis_session:load_session(<<"s6">>)),
        ok = test_util:wait_until(fun() -> servers_up() =:= [redis_test_server:address(Replica)] end, 10000)
    after
        redis_test_server:stop_sentinel(Sentinel)
    end.

servers_up() ->
    [S || #{server := S, state := up} <- maps:get(server_states, emqx_redis_storage:status())].

%% A Redis Cluster whose nodes are on ::1 (CLUSTER SLOTS names IPv6
%% addresses): keys in every slot range, and status names each node.
ipv6_cluster(_Config) ->
    Nodes = redis_test_server:start_cluster(#{host => "::1", replicas => 0}),
    try
        Hosts = lists:join(",", [redis_test_server:address(N) || N <- lists:sublist(Nodes, 2)]),
        ok = emqx_redis_storage:start(#{redis => #{url => iolist_to_binary(["redis+cluster://", Hosts])}}),
        Clients = [integer_to_binary(I) || I <- lists:seq(1, 30)],
        [ok = emqx_redis_session:save_session(C, C) || C <- Clients],
        ?assertEqual({ok, 30}, emqx_redis_session:count_sessions()),
        [?assertEqual({ok, C}, emqx_redis_session:load_session(C)) || C <- Clients],
        ?assertEqual(lists:sort([redis_test_server:address(N) || N <- Nodes]), lists:sort(servers_up()))
    after
        redis_test_server:stop_cluster(Nodes)
    end.

%% status, the client term, errors (a wrong password, a URL refused for a
%% bad port, for a bad escape) and crash-free: the password never shows.
password_in_url_never_shown(_Config) ->
    Redis = redis_test_server:start(#{conf => ["requirepass " ?PASSWORD]}),
    try
        Address = redis_test_server:address(Redis),
        Url = iolist_to_binary(["redis://:" ?PASSWORD "@", Address]),
        ok = emqx_redis_storage:start(#{redis => #{url => Url}}),
        {ok, Client} = emqx_redis_storage:connect(#{redis => #{url => Url}}),
        Errors = [
            emqx_redis_storage:connect(#{redis => #{url => binary:replace(Url, Address, <<"127.0.0.1:0">>)}}),
            emqx_redis_storage:connect(#{redis => #{url => <<"redis://:" ?PASSWORD "%zz@h">>}}),
            emqx_redis_storage:connect(#{redis => #{url => Url, password => <<"x">>}}),
            emqx_redis_storage:connect(#{redis => #{url => <<"redis://:" ?PASSWORD "@127.0.0.1:1">>, connect_timeout => 500}})
        ],
        [?assertMatch({error, _}, E) || E <- Errors],
        Shown = io_lib:format("~p ~p ~p ~p", [emqx_redis_storage:status(), Client, Errors, emqx_redis_storage_client:info(Client)]),
        ?assertEqual(nomatch, string:find(lists:flatten(Shown), ?PASSWORD))
    after
        redis_test_server:stop(Redis)
    end.
